"""The training and evaluation runs behind `pitstop train router` / `pitstop eval router`.

Features are computed once per feature spec for every prompt of the data set, then each router is
fitted on the training rows and predicts the evaluation rows: train/test where the source publishes a
split, K-fold cross-fitting (every prompt predicted by a router that never saw it) where it does not."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from routers.base import Candidate, RoutingRequest
from routers.data.table import RoutingData
from routers.evaluate import Predictions
from routers.families import build_router
from routers.features.featurizer import Features, FeatureSpec, Featurizer
from routers.features.static import StaticEncoder
from routers.learned import LearnedRouter
from routers.metrics import percentiles_ms


@dataclass(frozen=True)
class RouterSpec:
    """One router in a report: a family on a feature spec, under a display name."""

    label: str
    family: str
    features: FeatureSpec


class FeatureBank:
    """Features per spec for one data set's prompts, computed once."""

    def __init__(self, data: RoutingData, encoder: StaticEncoder | None) -> None:
        self.data, self.encoder = data, encoder
        self._by_spec: dict[FeatureSpec, Features] = {}

    def featurizer(self, spec: FeatureSpec) -> Featurizer:
        return Featurizer(spec, self.encoder if spec.encoder == "static" else None)

    def get(self, spec: FeatureSpec) -> Features:
        if spec not in self._by_spec:
            self._by_spec[spec] = self.featurizer(spec).transform(self.data.prompts)
        return self._by_spec[spec]


def fit_router(spec: RouterSpec, bank: FeatureBank, rows: np.ndarray) -> LearnedRouter:
    data = bank.data
    router = build_router(spec.family, data.models, spec.features, bank.featurizer(spec.features).encoder,
                          name=spec.label)
    return router.fit_features(bank.get(spec.features).rows(rows), data.subset(rows))


def split_predictions(spec: RouterSpec, bank: FeatureBank, train_rows: np.ndarray,
                      eval_rows: np.ndarray) -> tuple[Predictions, LearnedRouter]:
    router = fit_router(spec, bank, train_rows)
    quality, tokens = router.predict_features(bank.get(spec.features).rows(eval_rows))
    return Predictions(spec.label, quality, tokens), router


def cross_fit_predictions(spec: RouterSpec, bank: FeatureBank, folds: int = 5, seed: int = 0,
                          rows: np.ndarray | None = None) -> tuple[Predictions, LearnedRouter]:
    """Out-of-fold predictions for every prompt (of `rows`, default all), and the last fold's router
    (for latency)."""
    rows = np.arange(len(bank.data)) if rows is None else np.asarray(rows)
    n, m = len(rows), len(bank.data.models)
    quality, tokens = np.zeros((n, m)), np.zeros((n, m))
    router = None
    for fit, held in KFold(folds, shuffle=True, random_state=seed).split(rows):
        router = fit_router(spec, bank, rows[fit])
        quality[held], tokens[held] = router.predict_features(bank.get(spec.features).rows(rows[held]))
    assert router is not None
    return Predictions(spec.label, quality, tokens), router


def measure_latency(router: LearnedRouter, prompts: Sequence[str], prompt_tokens: Sequence[int],
                    candidates: list[Candidate], warmup: int = 20) -> dict[str, float]:
    """Features + inference per request (router.estimate), one thread for torch and BLAS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            requests = [RoutingRequest(p, int(t)) for p, t in zip(prompts, prompt_tokens, strict=True)]
            for request in requests[:warmup]:
                router.estimate(request, candidates)
            seconds = []
            for request in requests:
                start = time.perf_counter()
                router.estimate(request, candidates)
                seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return percentiles_ms(seconds)
