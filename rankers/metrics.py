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


def other_models_scores(data: LengthData) -> np.ndarray:
    """Per answer: the mean standardised log length of the other models' answers to the same prompt.
    Not a ranker (it reads the answers): the ceiling of any ranker that sees only the prompt, since
    it knows how long the prompt makes answers run, all but the model's own idiosyncrasy."""
    logs = np.log1p(data.output_tokens.astype(np.float64))
    z = np.zeros(len(logs))
    for model in data.model_names:
        rows = data.models == model
        z[rows] = (logs[rows] - logs[rows].mean()) / (logs[rows].std() or 1.0)
    totals: dict[str, tuple[float, int]] = {}
    for prompt, value in zip(data.prompt_ids.tolist(), z, strict=True):
        total, count = totals.get(prompt, (0.0, 0))
        totals[prompt] = (total + value, count + 1)
    out = np.full(len(z), np.nan)
    for i, (prompt, value) in enumerate(zip(data.prompt_ids.tolist(), z, strict=True)):
        total, count = totals[prompt]
        if count > 1:
            out[i] = (total - value) / (count - 1)
    return out


def mean_tau(per_model: dict[str, float]) -> float:
    values = [v for v in per_model.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
