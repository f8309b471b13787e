"""The quality-model contract shared by every learned router family, and per-model fitting helpers.

Labels are a (prompts x models) matrix in [0, 1] with NaN for missing cells; each family learns from
the cells it has. Fractional labels (judge scores, partial credit) are handled as soft labels: a row
with label y counts as a success with weight y and a failure with weight 1 - y."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from routers.features.featurizer import Features


class QualityModel(Protocol):
    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None: ...

    def predict(self, x: Features) -> np.ndarray: ...  # (n, m), in [0, 1]


def soft_label_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Duplicate rows as (label 1, weight w y) and (label 0, weight w (1 - y)); drop zero weights."""
    xs = sp.vstack([x, x]).tocsr() if sp.issparse(x) else np.vstack([x, x])
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weights = np.concatenate([w * y, w * (1 - y)])
    keep = weights > 0
    return xs[keep], labels[keep], weights[keep]


def per_model(y: np.ndarray, fit_one: Callable[[int, np.ndarray, np.ndarray], object]) -> list[object | float]:
    """Fit one estimator per model column on its observed rows; a column with one label value (or none)
    becomes that constant."""
    fitted: list[object | float] = []
    for j in range(y.shape[1]):
        rows = np.flatnonzero(~np.isnan(y[:, j]))
        values = y[rows, j]
        if len(rows) == 0:
            fitted.append(0.5)
        elif np.all(values == values[0]) and values[0] in (0.0, 1.0):
            fitted.append(float(values[0]))
        else:
            fitted.append(fit_one(j, rows, values))
    return fitted


def column_means(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(y)
    w = np.where(ok, weight, 0.0)
    return np.where(w.sum(0) > 0, (np.nan_to_num(y) * w).sum(0) / np.maximum(w.sum(0), 1e-12), 0.5)
