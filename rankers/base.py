"""The ranker interface: `score(prompt, model) -> float`, lower = expected shorter answer.

Every family returns a calibrated score in [0, 1]: the share of the model's training answers its raw
score ranks below, ties counting half (all models' answers for a model not seen in training). Per model, because one
deployment serves one model: its requests spread over the whole [0, 1], whatever its verbosity. One
scale for all families makes the scheduler's aging rule family-independent: a score gap of 1.0 is
worth exactly `horizon_s` seconds of waiting (engine/rank_policy.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rankers.data import LengthData
from rankers.features import RankFeatures, RankFeaturizer
from rankers.work import WorkTable

QUANTILES = np.linspace(0.0, 1.0, 201)
_NUDGE = np.arange(len(QUANTILES)) * 1e-12  # see Ranker._calibrated
MIN_CALIBRATION_ROWS = 50  # fewer answers of a model than this: it uses the pooled calibration


class Ranker:
    family = "base"

    def __init__(self, featurizer: RankFeaturizer | None) -> None:
        self.featurizer = featurizer
        self.models: list[str] = []  # seen in training; others are scored as an unknown model
        self.raw_quantiles = np.zeros(len(QUANTILES))  # pooled over every training answer
        self.model_quantiles: dict[str, np.ndarray] = {}
        self.version = "untrained"
        self.manifest: dict = {}
        # Prompt plus answer lengths of the training requests (rankers/work.py); artifacts from before
        # stop 20 lack it until `pitstop train ranker --add-work-table` adds it.
        self.work_table: WorkTable | None = None

    # Families implement these two.
    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        raise NotImplementedError

    def raw_scores(self, prompts: Sequence[str], features: RankFeatures | None, models: Sequence[str]
                   ) -> np.ndarray:
        raise NotImplementedError

    def featurize(self, prompts: Sequence[str]) -> RankFeatures | None:
        return None if self.featurizer is None else self.featurizer.transform(prompts)

    def fit(self, data: LengthData, features: RankFeatures | None = None) -> Ranker:
        assert len(data) > 0, "no training rows"
        self.models = data.model_names
        features = features if features is not None else self.featurize(list(data.prompts))
        self.fit_raw(data, features)
        raw = self.raw_scores(list(data.prompts), features, list(data.models))
        self.raw_quantiles = np.quantile(raw, QUANTILES)
        self.model_quantiles = {m: np.quantile(raw[data.models == m], QUANTILES) for m in self.models
                                if (data.models == m).sum() >= MIN_CALIBRATION_ROWS}
        self.work_table = WorkTable.fit(data)
        return self

    def calibrate(self, raw: np.ndarray, models: Sequence[str]) -> np.ndarray:
        raw = np.asarray(raw)
        if len(raw) == 1:  # the request path: one prompt, no grouping by model
            return self._calibrated(raw, models[0])
        out = np.empty(len(raw))
        models = np.asarray(models, dtype=object)
        for model in set(models.tolist()):
            rows = models == model
            out[rows] = self._calibrated(raw[rows], model)
        return out

    def _calibrated(self, raw: np.ndarray, model: str) -> np.ndarray:
        quantiles = self.model_quantiles.get(model, self.raw_quantiles)
        # np.interp needs increasing x, so tied quantiles (a constant stretch) are nudged apart; a raw
        # score equal to the stretch gets its middle (nudged up, interp lands at the stretch's bottom;
        # nudged down, at its top). Many prompts can share one raw score: a truncated encoder sees
        # RouterBench's few-shot preambles alike.
        bottom = np.interp(raw, quantiles + _NUDGE, QUANTILES)
        top = np.interp(raw, quantiles - _NUDGE[::-1], QUANTILES)
        return (bottom + top) / 2

    def score_batch(self, prompts: Sequence[str], models: Sequence[str],
                    features: RankFeatures | None = None) -> np.ndarray:
        if not len(prompts):
            return np.zeros(0)
        features = features if features is not None else self.featurize(list(prompts))
        return self.calibrate(self.raw_scores(list(prompts), features, list(models)), models)

    def score(self, prompt: str, model: str) -> float:
        features = None if self.featurizer is None else self.featurizer.transform_one(prompt)
        return float(self.calibrate(self.raw_scores([prompt], features, [model]), [model])[0])


def log_length_z(data: LengthData) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """Per-model standardised log length: models differ in verbosity; ranks within a model do not care."""
    logs = np.log1p(data.output_tokens.astype(np.float64))
    stats: dict[str, tuple[float, float]] = {}
    z = np.zeros(len(logs))
    for model in data.model_names:
        rows = data.models == model
        mean, std = float(logs[rows].mean()), float(logs[rows].std()) or 1.0
        stats[model] = (mean, std)
        z[rows] = (logs[rows] - mean) / std
    return z, stats


def length_grades(data: LengthData, grades: int = 10) -> np.ndarray:
    """Per-model length decile 0..grades-1 (LambdaRank's relevance labels: longer = higher)."""
    out = np.zeros(len(data), dtype=np.int32)
    for model in data.model_names:
        rows = np.flatnonzero(data.models == model)
        order = np.argsort(np.argsort(data.output_tokens[rows], kind="stable"), kind="stable")
        out[rows] = (order * grades) // max(len(rows), 1)
    return out
