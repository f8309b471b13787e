"""`pitstop train router`: fit one family on a data set and write its artifact.

Metrics in the manifest: where the data set has a test split and training used its train split, the
router is measured on the test split right away (the same harness as `pitstop eval router`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from routers.artifact import default_artifact_path, save_router
from routers.data.catalog import REPO_ROOT, load_dataset
from routers.data.prices import fit_prices
from routers.data.table import RoutingData
from routers.encoder_store import load_or_distil
from routers.evaluate import Predictions, candidates_for, evaluate_multi, evaluate_two
from routers.families import BASELINES, build_router
from routers.features.featurizer import FeatureSpec
from routers.jobs import measure_latency
from routers.learned import LearnedRouter
from routers.run_eval import BASELINE_FEATURES, PEER_STATIC_FEATURES, PITSTOP_FEATURES

log = logging.getLogger("pitstop.routers")


def default_features(family: str) -> FeatureSpec:
    if family == "pitstop":
        return PITSTOP_FEATURES
    return BASELINE_FEATURES if family in BASELINES else PEER_STATIC_FEATURES


def _held_out_metrics(router: LearnedRouter, train: RoutingData, test: RoutingData) -> dict[str, Any]:
    quality, tokens = router.estimate_batch(test.prompts)
    pred = Predictions(router.name, quality, tokens)
    prices = fit_prices(train)[0]
    pred.latency = measure_latency(router, test.prompts[:200], test.prompt_tokens[:200].tolist(),
                                   candidates_for(test.models, prices))
    if len(test.models) == 2:
        q = np.nanmean(test.quality, axis=0)
        strong, weak = (test.models[0], test.models[1]) if q[0] >= q[1] else (test.models[1], test.models[0])
        result = evaluate_two([pred], test, strong, weak)["routers"][router.name]
        keys = ("apgr", "cpt50", "cpt80")
    else:
        result = evaluate_multi([pred], test, prices, "drop")["routers"][router.name]
        keys = ("aiq", "quality_at_strongest_cost", "cost_share_to_match_strongest", "max_quality")
    return {"split": "test", "prompts": len(test), **{k: result[k] for k in keys}, "latency": pred.latency}


def train_and_save(family: str, data_name: str, split: str | None = None, out: Path | None = None,
                   encoder_path: str | None = None, data_root: Path | None = None,
                   features: FeatureSpec | None = None) -> tuple[Path, dict[str, Any]]:
    data = load_dataset(data_name, data_root)
    has_split = {"train", "test"} <= set(data.splits)
    split = split or ("train" if has_split else "all")
    train = data if split == "all" else data.split(split)
    if len(train) == 0:
        raise ValueError(f"{data_name} has no prompts in split {split!r}")
    spec = features or default_features(family)
    encoder = load_or_distil(encoder_path) if spec.encoder == "static" else None
    router = build_router(family, data.models, spec, encoder).fit(train)
    metrics = _held_out_metrics(router, train, data.split("test")) if has_split and split == "train" else {}
    training_data = {"dataset": data_name, "split": split, "prompts": len(train), "files": data.source}
    path = out or REPO_ROOT / default_artifact_path(family, "latest")
    manifest = save_router(router, path, training_data, metrics)
    if out is None:  # name the file after its version, keep "<family>-latest" pointing at the newest
        versioned = path.with_name(f"{family}-{manifest['version']}.joblib")
        versioned.write_bytes(path.read_bytes())
        versioned.with_name(versioned.name + ".json").write_bytes(path.with_name(path.name + ".json").read_bytes())
    return path, manifest
