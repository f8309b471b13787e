"""Ranker families behind one interface (rankers/base.py).

- `prompt-length`: the longer the prompt, the longer the answer (the naive baseline).
- `ridge`: regression baseline: ridge on n-grams, statistics and cues to per-model standardised
  log length, one shared model (rows are (prompt, model) answers, so every model's answer counts).
- `lambdarank`: LightGBM LambdaRank, listwise: one query per model and chunk of prompts, relevance =
  the answer's length decile within its model; the model's identity is an input.
- `pitstop`: the mean of `ridge` and `lambdarank`'s calibrated scores (they err differently).
- `listmle`: a small transformer fine-tuned with ListMLE, as vllm-ltr (rankers/listmle.py).
- `listmle-blend`: `listmle` (0.8) and `lambdarank` (0.2) blended: the cheap features see the whole
  prompt, the encoder only its first tokens (rankers/listmle.py, bench/ranker_listmle_blend.py)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from rankers.base import Ranker, length_grades, log_length_z
from rankers.data import LengthData
from rankers.features import RankFeatures, RankFeaturizer
from routers.tokens import count_tokens


class PromptLengthRanker(Ranker):
    family = "prompt-length"

    def __init__(self, featurizer: RankFeaturizer | None = None) -> None:
        super().__init__(None)

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        pass

    def raw_scores(self, prompts: Sequence[str], features: RankFeatures | None, models: Sequence[str]
                   ) -> np.ndarray:
        return np.log1p(np.asarray(_token_counts(prompts), dtype=np.float64))


_COUNTS: dict[str, int] = {}  # evaluation scores the same prompts many times over


def _token_counts(prompts: Sequence[str]) -> list[int]:
    missing = list({p for p in prompts if p not in _COUNTS})
    if len(_COUNTS) + len(missing) > 200_000:
        _COUNTS.clear()
    _COUNTS.update(zip(missing, count_tokens(missing), strict=True))
    return [_COUNTS[p] for p in prompts]


class RidgeRanker(Ranker):
    family = "ridge"

    def __init__(self, featurizer: RankFeaturizer, alpha: float = 1.0) -> None:
        super().__init__(featurizer)
        self.alpha = alpha
        self.scaler = StandardScaler()
        self.model = Ridge(alpha=alpha)
        self.model_stats: dict[str, tuple[float, float]] = {}

    def _design(self, features: RankFeatures) -> sp.csr_matrix:
        dense = sp.csr_matrix(self.scaler.transform(features.dense) / np.sqrt(features.dense.shape[1]))
        return dense if features.sparse is None else sp.hstack([features.sparse, dense]).tocsr()

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        assert features is not None
        z, self.model_stats = log_length_z(data)
        self.scaler.fit(features.dense)
        self.model.fit(self._design(features), z)

    def raw_scores(self, prompts: Sequence[str], features: RankFeatures | None, models: Sequence[str]
                   ) -> np.ndarray:
        # The fitted linear map applied directly: sklearn's checks and scipy's hstack cost ~0.4 ms a request.
        assert features is not None
        coef, n_sparse = self.model.coef_, 0 if features.sparse is None else features.sparse.shape[1]
        dense = (features.dense - self.scaler.mean_) / self.scaler.scale_ / np.sqrt(features.dense.shape[1])
        out = dense @ coef[n_sparse:] + self.model.intercept_
        return out if features.sparse is None else out + features.sparse @ coef[:n_sparse]

    def predicted_log_tokens(self, prompt: str, model: str) -> float | None:
        """The regression's own estimate of log(1 + tokens), for a model seen in training."""
        if model not in self.model_stats or self.featurizer is None:
            return None
        mean, std = self.model_stats[model]
        return mean + std * float(self.raw_scores([prompt], self.featurizer.transform_one(prompt), [model])[0])


class LambdaRankRanker(Ranker):
    family = "lambdarank"

    def __init__(self, featurizer: RankFeaturizer, query_size: int = 64, n_estimators: int = 300,
                 num_leaves: int = 7, seed: int = 0) -> None:
        super().__init__(featurizer)
        self.query_size, self.seed = query_size, seed
        self.model = lgb.LGBMRanker(objective="lambdarank", n_estimators=n_estimators, learning_rate=0.03,
                                    num_leaves=num_leaves, min_child_samples=10, subsample=0.8, subsample_freq=1,
                                    colsample_bytree=0.5, lambdarank_truncation_level=query_size,
                                    random_state=seed, n_jobs=1, verbose=-1)

    def _design(self, features: RankFeatures, models: Sequence[str]) -> np.ndarray:
        one_hot = np.zeros((len(models), len(self.models)), dtype=np.float32)
        index = {m: j for j, m in enumerate(self.models)}
        for i, model in enumerate(models):
            if model in index:  # an unseen model keeps all zeros
                one_hot[i, index[model]] = 1.0
        return np.hstack([features.dense, one_hot])

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        assert features is not None
        grades = length_grades(data)
        rng = np.random.default_rng(self.seed)
        order, groups = [], []
        for model in data.model_names:  # a query never mixes models: their lengths are not comparable
            rows = rng.permutation(np.flatnonzero(data.models == model))
            for start in range(0, len(rows), self.query_size):
                chunk = rows[start:start + self.query_size]
                order.append(chunk)
                groups.append(len(chunk))
        index = np.concatenate(order)
        self.model.fit(self._design(features.rows(index), list(data.models[index])), grades[index], group=groups)

    def raw_scores(self, prompts: Sequence[str], features: RankFeatures | None, models: Sequence[str]
                   ) -> np.ndarray:
        assert features is not None
        # The booster itself: the sklearn wrapper's input checks cost ~0.4 ms a request.
        return self.model.booster_.predict(self._design(features, models), num_threads=1)


class BlendRanker(Ranker):
    """A weighted mean of its parts' calibrated scores (each part calibrated per model, so one scale)."""

    family = "blend"
    weights: tuple[float, ...] | None = None  # None: equal (class default: artifacts from before weights)

    def __init__(self, featurizer: RankFeaturizer | None, parts: Sequence[Ranker] = (),
                 weights: Sequence[float] | None = None) -> None:
        super().__init__(featurizer)
        self.parts: list[Ranker] = list(parts)
        if weights is not None:
            assert len(weights) == len(self.parts), "one weight per part"
            self.weights = tuple(float(w) for w in weights)

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        for part in self.parts:
            part.fit(data, features)

    def raw_scores(self, prompts: Sequence[str], features: RankFeatures | None, models: Sequence[str]
                   ) -> np.ndarray:
        weights = self.weights or (1.0,) * len(self.parts)
        # A weighted sum by hand: np.average's checks cost more than the arithmetic on one request.
        total = sum(w * p.calibrate(p.raw_scores(prompts, features, models), models)
                    for w, p in zip(weights, self.parts, strict=True))
        return total / sum(weights)


class EnsembleRanker(BlendRanker):
    family = "pitstop"

    def __init__(self, featurizer: RankFeaturizer) -> None:
        super().__init__(featurizer, [RidgeRanker(featurizer), LambdaRankRanker(featurizer)])


FAMILIES: dict[str, type[Ranker]] = {
    "prompt-length": PromptLengthRanker, "ridge": RidgeRanker, "lambdarank": LambdaRankRanker,
    "pitstop": EnsembleRanker,
}


# Families on torch + transformers, imported only when asked for (the request path never needs them).
LAZY_FAMILIES = {"listmle": ("rankers.listmle", "ListMLERanker"),
                 "listmle-blend": ("rankers.listmle", "ListMLEBlendRanker")}


def make_ranker(family: str, featurizer: RankFeaturizer | None) -> Ranker:
    if family in LAZY_FAMILIES:
        module, name = LAZY_FAMILIES[family]
        cls = getattr(importlib.import_module(module), name)
    elif family in FAMILIES:
        cls = FAMILIES[family]
    else:
        raise ValueError(f"unknown ranker family {family!r}; known: {sorted(FAMILIES | LAZY_FAMILIES)}")
    return cls(featurizer)  # type: ignore[arg-type]
