"""Router families by name: how `pitstop train router --family NAME` builds a router, and the names
an artifact records. Every family shares the featurizer, the answer-length model and the choice rule;
they differ only in the quality model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from routers.features.featurizer import FeatureSpec, Featurizer
from routers.features.static import StaticEncoder
from routers.learned import LearnedRouter
from routers.models.baselines import RandomQuality, ZeroQuality
from routers.models.length import LengthModel
from routers.models.neural import MFQuality, MLPQuality
from routers.models.peers import ForestQuality, KnnQuality, LightGBMQuality, LogisticQuality
from routers.models.pitstop import PitstopQuality
from routers.models.quality import QualityModel


@dataclass(frozen=True)
class Family:
    make: Callable[[], QualityModel]
    length: str  # answer-length model kind
    about: str


FAMILIES: dict[str, Family] = {
    "pitstop": Family(PitstopQuality, "ridge", "Pitstop default: cross-fitted stack, calibrated, task-aware"),
    "knn": Family(lambda: KnnQuality(10), "mean", "k nearest neighbours, k=10 (RouterBench)"),
    "mlp": Family(MLPQuality, "mean", "one-hidden-layer MLP (RouterBench)"),
    "rorf": Family(ForestQuality, "mean", "random forest on embeddings (NotDiamond RoRF)"),
    "logistic": Family(LogisticQuality, "mean", "logistic regression per model"),
    "lightgbm": Family(LightGBMQuality, "mean", "LightGBM per model"),
    "mf": Family(MFQuality, "mean", "matrix factorisation (RouteLLM mf)"),
    "zero": Family(ZeroQuality, "mean", "zero router: mean quality per model, prompt ignored"),
    "random": Family(RandomQuality, "mean", "random qualities per request"),
}
PEERS = ("knn", "mlp", "rorf", "logistic", "lightgbm", "mf")
BASELINES = ("random", "zero")


def build_router(family: str, models: list[str], spec: FeatureSpec, encoder: StaticEncoder | None,
                 name: str | None = None) -> LearnedRouter:
    if family not in FAMILIES:
        raise ValueError(f"unknown router family {family!r}; known: {sorted(FAMILIES)}")
    chosen = FAMILIES[family]
    return LearnedRouter(name or family, family, list(models), Featurizer(spec, encoder), chosen.make(),
                         LengthModel(chosen.length))
