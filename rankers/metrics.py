"""Kendall's tau per model (tau-b, scipy): how well one ranker orders one model's answers by length.

Ties count as scipy's tau-b counts them; a model with fewer than two answers, or one constant
column, has no tau (NaN) and is left out of the mean."""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau

from rankers.data import LengthData


def kendall_tau(scores: np.ndarray, lengths: np.ndarray) -> float:
    scores, lengths = np.asarray(scores, dtype=float), np.asarray(lengths, dtype=float)
    if len(scores) < 2 or np.all(scores == scores[0]) or np.all(lengths == lengths[0]):
        return float("nan")
    return float(kendalltau(scores, lengths).statistic)


def tau_per_model(data: LengthData, scores: np.ndarray) -> dict[str, float]:
    return {m: kendall_tau(scores[data.models == m], data.output_tokens[data.models == m])
            for m in data.model_names}


def mean_tau(per_model: dict[str, float]) -> float:
    values = [v for v in per_model.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
