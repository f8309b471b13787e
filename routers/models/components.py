"""Vectorised base learners for Pitstop's router: every model's prediction in one matrix product.

Fitted with scikit-learn, then reduced to plain arrays, so inference for one request is a few numpy
operations whatever the number of models (a per-model scikit-learn call costs ~50 us each)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from routers.features.featurizer import Features
from routers.models.quality import column_means, soft_label_rows
from routers.models.standardizer import Standardizer


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))


def _fit_logistic_columns(x: np.ndarray, y: np.ndarray, weight: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-model L2 logistic regression on observed cells; (dim, m) weights and (m,) biases."""
    coef = np.zeros((x.shape[1], y.shape[1]), dtype=np.float32)
    bias = logit(column_means(y, weight)).astype(np.float32)
    for j in range(y.shape[1]):
        rows = np.flatnonzero(~np.isnan(y[:, j]))
        values = y[rows, j]
        if len(rows) == 0 or values.min() == values.max():
            continue
        xs, labels, w = soft_label_rows(x[rows], values, weight[rows, j])
        fitted = LogisticRegression(C=c, max_iter=1000, tol=1e-3).fit(xs, labels, sample_weight=w)
        coef[:, j], bias[j] = fitted.coef_[0], fitted.intercept_[0]
    return coef, bias


class DenseLogit:
    """Logistic regression per model on standardised dense features (embedding views, statistics)."""

    def __init__(self, c: float = 0.01, blocks: tuple[str, ...] | None = None, standardize: bool = True) -> None:
        self.c, self.blocks, self.standardize = c, blocks, standardize

    def _x(self, x: Features) -> np.ndarray:
        return x.dense if self.blocks is None else x.block(*self.blocks)

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        # Unit-norm embeddings alone can stay as they are (small coordinates act as strong regularisation).
        self.scaler = Standardizer().fit(self._x(x), columns=None if self.standardize else slice(0, 0))
        self.coef, self.bias = _fit_logistic_columns(self.scaler(self._x(x)), y, weight, self.c)

    def predict(self, x: Features) -> np.ndarray:
        return sigmoid(self.scaler(self._x(x)) @ self.coef + self.bias)


class SparseLogit:
    """Logistic regression per model on hashed n-grams; keeps only the buckets seen in training."""

    def __init__(self, c: float = 0.3) -> None:
        self.c = c

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        assert x.sparse is not None, "SparseLogit needs n-gram features"
        seen = np.unique(x.sparse.indices)
        compact = x.sparse[:, seen]
        coef, self.bias = _fit_logistic_columns(compact, y, weight, self.c)
        self.buckets, self.coef = seen.astype(np.int64), coef

    def predict(self, x: Features) -> np.ndarray:
        assert x.sparse is not None
        return sigmoid(bucket_product(x.sparse, self.buckets, self.coef) + self.bias)


def bucket_product(sparse: sp.spmatrix, buckets: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """`sparse` restricted to the sorted columns `buckets`, times `coef` (len(buckets), k): (n, k).
    Row by row with searchsorted: a one-row request costs microseconds, where scipy's column slicing
    of a 2**18-wide matrix costs ~0.1 ms; buckets unseen in training contribute nothing."""
    csr = sparse.tocsr()
    out = np.zeros((csr.shape[0], coef.shape[1]))
    if len(buckets) == 0:
        return out
    for i in range(csr.shape[0]):
        ids = csr.indices[csr.indptr[i]:csr.indptr[i + 1]]
        vals = csr.data[csr.indptr[i]:csr.indptr[i + 1]]
        pos = np.minimum(np.searchsorted(buckets, ids), len(buckets) - 1)
        hit = buckets[pos] == ids
        out[i] = vals[hit] @ coef[pos[hit]]
    return out


class NeighbourMean:
    """Shrunk mean label of the k most similar training prompts (cosine on one embedding view):
    (sum of neighbour labels + s x model mean) / (neighbours seen + s)."""

    def __init__(self, k: int = 25, block: str = "focus", shrink: float = 5.0) -> None:
        self.k, self.block, self.shrink = k, block, shrink

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        keys = x.block(self.block)
        self.keys = (keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-9)).astype(np.float16)
        self.y, self.prior = y.astype(np.float32), column_means(y, weight)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_keys32"}  # float16 on disk

    def predict(self, x: Features) -> np.ndarray:
        if getattr(self, "_keys32", None) is None:
            self._keys32 = np.ascontiguousarray(self.keys.astype(np.float32).T)
        q = x.block(self.block)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-9)
        sims = q.astype(np.float32) @ self._keys32
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        labels = self.y[top]  # (n, k, m)
        seen = (~np.isnan(labels)).sum(axis=1)
        return (np.nansum(labels, axis=1) + self.shrink * self.prior) / (seen + self.shrink)


class TaskPrior:
    """Task awareness: P(task | prompt) from a multinomial logistic regression, times each task's
    (shrunk) mean quality per model. Needs task labels in the training data (>= 2 tasks)."""

    def __init__(self, c: float = 0.01, blocks: tuple[str, ...] = ("head",), shrink: float = 20.0) -> None:
        self.c, self.blocks, self.shrink = c, blocks, shrink

    def fit_tasks(self, x: Features, tasks: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        self.names = sorted(set(tasks))
        overall = column_means(y, weight)
        means = []
        for t in self.names:
            rows = tasks == t
            ok = ~np.isnan(y[rows])
            n = ok.sum(axis=0)
            means.append((np.nansum(y[rows], axis=0) + self.shrink * overall) / (n + self.shrink))
        self.task_quality = np.array(means)  # (T, m)
        self.scaler = Standardizer().fit(x.block(*self.blocks))
        if len(self.names) < 2:
            self.coef = None
            return
        clf = LogisticRegression(C=self.c, max_iter=1000, tol=1e-3).fit(self.scaler(x.block(*self.blocks)), tasks)
        order = [list(clf.classes_).index(t) for t in self.names]
        if len(self.names) == 2:  # binary: one column of scores for the second class
            self.coef = np.hstack([-clf.coef_.T, clf.coef_.T]) / 2
            self.intercept = np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2
        else:
            self.coef, self.intercept = clf.coef_[order].T, clf.intercept_[order]

    def task_probabilities(self, x: Features) -> np.ndarray:
        if self.coef is None:
            return np.ones((len(x), 1))
        z = self.scaler(x.block(*self.blocks)) @ self.coef + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: Features) -> np.ndarray:
        return self.task_probabilities(x) @ self.task_quality
