"""`pitstop eval ranker`: every family on held-out prompts, per model, and on models unseen in training.

Protocol (all splits by prompt, rankers/split.py):
- selection: k-fold cross-validation on the training prompts only (the held-out prompts are never
  used to choose a family or feature set);
- held out: fit on all training prompts, Kendall's tau per model on the held-out prompts; the
  headline is the mean over AlpacaEval's 10 models;
- unseen models: for each AlpacaEval model, fit without any of its answers, rank its held-out answers
  (the model enters as unknown);
- request-path cost: `score(prompt, model)` one request at a time on one thread, p50/p99 ms."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from tqdm import tqdm

from rankers.base import Ranker
from rankers.data import LengthData
from rankers.families import make_ranker
from rankers.features import RankFeatures, RankFeaturizer
from rankers.metrics import mean_tau, other_models_scores, tau_per_model
from rankers.split import prompt_folds, split_mask


def _is_alpaca(data: LengthData) -> np.ndarray:
    return np.array([p.startswith("alpaca.") for p in data.prompt_ids], dtype=bool)


class Frame:
    """Data with its features computed once; every fit and score below takes row subsets of both."""

    def __init__(self, data: LengthData, features: RankFeatures | None) -> None:
        self.data, self.features = data, features

    def rows(self, mask: np.ndarray) -> Frame:
        index = np.flatnonzero(mask)
        return Frame(self.data.rows(index), None if self.features is None else self.features.rows(index))

    def fit(self, family: str, featurizer: RankFeaturizer | None) -> Ranker:
        return make_ranker(family, featurizer).fit(self.data, self.features)

    def taus(self, ranker: Ranker) -> dict[str, float]:
        scores = ranker.score_batch(list(self.data.prompts), list(self.data.models), self.features)
        return tau_per_model(self.data, scores)


def cross_validated_tau(family: str, featurizer: RankFeaturizer | None, train: Frame, folds: int) -> float:
    fold = prompt_folds(train.data, folds)
    alpaca = _is_alpaca(train.data)
    taus = []
    for k in range(folds):
        if not (alpaca & (fold == k)).any():
            continue
        ranker = train.rows(fold != k).fit(family, featurizer)
        taus.append(mean_tau(train.rows(alpaca & (fold == k)).taus(ranker)))
    return float(np.mean(taus)) if taus else float("nan")


def unseen_model_taus(family: str, featurizer: RankFeaturizer | None, train: Frame, test: Frame
                      ) -> dict[str, float]:
    out = {}
    alpaca = _is_alpaca(test.data)
    for model in test.rows(alpaca).data.model_names:
        ranker = train.rows(train.data.models != model).fit(family, featurizer)
        out[model] = test.rows(alpaca & (test.data.models == model)).taus(ranker)[model]
    return out


def request_latency_ms(ranker: Ranker, prompts: Iterable[str], model: str) -> dict[str, float]:
    times = []
    for prompt in prompts:
        started = time.perf_counter()
        ranker.score(prompt, model)
        times.append((time.perf_counter() - started) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "requests": len(times)}


def evaluate(data: LengthData, families: list[str], featurizers: dict[str, RankFeaturizer], folds: int,
             unseen_families: set[str], latency_requests: int) -> dict[str, Any]:
    is_test = split_mask(data)
    headline_test = data.rows(is_test & _is_alpaca(data))
    report: dict[str, Any] = {
        "data": data.name, "source": data.source, "split": "by prompt (rankers/split.py), test fraction 0.2",
        "train_prompts": len(data.rows(~is_test).unique_prompt_ids), "test_prompts": len(data.rows(is_test).unique_prompt_ids),
        "headline_test_prompts": len(headline_test.unique_prompt_ids),
        "headline_models": headline_test.model_names, "results": [],
        # What the other models' real answer lengths reach on the same held-out prompts: the ceiling.
        "ceiling_other_models_tau_alpaca": mean_tau(tau_per_model(headline_test, other_models_scores(headline_test))),
    }
    frames = {"-": Frame(data, None)}
    for name, featurizer in tqdm(featurizers.items(), desc="features", unit="set"):
        frames[name] = Frame(data, featurizer.transform(list(data.prompts)))
    runs = [(f, s) for f in families for s in (["-"] if f == "prompt-length" else list(featurizers))]
    for family, spec in tqdm(runs, desc="rankers", unit="ranker"):
        featurizer, frame = featurizers.get(spec), frames[spec]
        train, test = frame.rows(~is_test), frame.rows(is_test)
        started = time.perf_counter()
        ranker = train.fit(family, featurizer)
        fit_s = time.perf_counter() - started
        headline = test.rows(_is_alpaca(test.data)).taus(ranker)
        every = test.taus(ranker)
        row = {"family": family, "features": spec, "fit_s": round(fit_s, 2),
               "cv_tau_alpaca": cross_validated_tau(family, featurizer, train, folds),
               "heldout_tau_alpaca_mean": mean_tau(headline), "heldout_tau_alpaca": headline,
               "heldout_tau_all_sources_mean": mean_tau(every), "heldout_tau_all_sources": every,
               "latency": request_latency_ms(ranker, list(headline_test.prompts)[:latency_requests],
                                             headline_test.model_names[0])}
        if family in unseen_families and spec == next(iter(featurizers)):  # the first feature set only
            unseen = unseen_model_taus(family, featurizer, train, test)
            row |= {"unseen_model_tau_mean": mean_tau(unseen), "unseen_model_tau": unseen}
        report["results"].append(row)
    return report
