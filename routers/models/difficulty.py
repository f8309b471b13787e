"""Expected answer length as a difficulty signal: a base learner for Pitstop's stacked router.

A problem whose solution runs long needs more steps, and every step is a chance for a weaker model
to slip: on GSM8K, GPT-4's real answer length alone ranks Mixtral's failures at ROC AUC 0.67. The
lengths are not known at request time, but they are far more predictable from the prompt than
correctness is, and training data with responses has them for every model. So this learner regresses
each model's log answer length on the prompt (ridge on n-grams + dense features), then, per model,
fits a logistic regression of quality on the standardised predicted lengths of all models. The
logistic learns from cross-fitted length predictions (K folds inside the training rows), so it sees
lengths as noisy as they will be on new prompts, not the ridge's in-sample fit."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from routers.features.featurizer import Features
from routers.models.components import _fit_logistic_columns, bucket_product, logit, sigmoid
from routers.models.quality import column_means
from routers.models.standardizer import Standardizer

MIN_LENGTH_ROWS = 50  # a model needs this many answers with a known length to get a regression


def has_lengths(tokens: np.ndarray | None) -> bool:
    return tokens is not None and bool(((~np.isnan(tokens)).sum(axis=0) >= MIN_LENGTH_ROWS).any())


def compact_columns(matrix: sp.csr_matrix, buckets: np.ndarray) -> sp.csr_matrix:
    """The columns `buckets` (sorted) of a CSR matrix, renumbered 0..len-1; other columns dropped.
    A searchsorted over the stored entries: scipy's column slicing of a 2**18-wide row costs ~0.1 ms."""
    if len(buckets) == 0:
        return sp.csr_matrix((matrix.shape[0], 0), dtype=matrix.dtype)
    pos = np.minimum(np.searchsorted(buckets, matrix.indices), len(buckets) - 1)
    hit = buckets[pos] == matrix.indices
    return sp.csr_matrix((np.where(hit, matrix.data, 0), np.where(hit, pos, 0), matrix.indptr),
                         shape=(matrix.shape[0], len(buckets)))


class LogLengthRidge:
    """Ridge regression of log(1 + tokens) per model on hashed n-grams plus standardised dense features,
    reduced to plain arrays (n-gram buckets seen in training only) so one request is two products."""

    def __init__(self, alpha: float = 3.0) -> None:
        self.alpha = alpha

    def _design(self, x: Features) -> sp.csr_matrix:
        dense = self.scaler(x.dense) / np.sqrt(x.dense.shape[1])
        parts = [sp.csr_matrix(dense)]
        if x.sparse is not None:
            parts.insert(0, compact_columns(x.sparse.tocsr(), self.buckets))
        return sp.hstack(parts).tocsr()

    def fit(self, x: Features, tokens: np.ndarray, columns: np.ndarray | None = None) -> LogLengthRidge:
        """`columns`: the models to regress (default: those with MIN_LENGTH_ROWS known lengths); one with
        fewer than two known lengths here predicts their mean log length (0 without any)."""
        known = (~np.isnan(tokens)).sum(axis=0)
        self.columns = np.flatnonzero(known >= MIN_LENGTH_ROWS) if columns is None else np.asarray(columns)
        self.scaler = Standardizer().fit(x.dense)
        self.buckets = np.unique(x.sparse.indices) if x.sparse is not None else np.zeros(0, dtype=np.int64)
        design = self._design(x)
        self.coef = np.zeros((design.shape[1], len(self.columns)))
        self.intercept = np.zeros(len(self.columns))
        for k, j in enumerate(self.columns):
            rows = np.flatnonzero(~np.isnan(tokens[:, j]))
            if len(rows) < 2:
                self.intercept[k] = float(np.log1p(tokens[rows, j]).mean()) if len(rows) else 0.0
                continue
            ridge = Ridge(alpha=self.alpha).fit(design[rows], np.log1p(tokens[rows, j]))
            self.coef[:, k], self.intercept[k] = ridge.coef_, ridge.intercept_
        return self

    def predict(self, x: Features) -> np.ndarray:
        """(n, len(self.columns)) predicted log(1 + tokens)."""
        # The two blocks' products summed, not one product over a stacked matrix: sp.hstack and the
        # CSR conversions cost ~0.2 ms on a one-row request.
        n_sparse = len(self.buckets) if x.sparse is not None else 0
        out = (self.scaler(x.dense) / np.sqrt(x.dense.shape[1])) @ self.coef[n_sparse:] + self.intercept
        if n_sparse:
            out += bucket_product(x.sparse, self.buckets, self.coef[:n_sparse])
        return out


class LengthDifficulty:
    """Per-model logistic regression of quality on all models' predicted log answer lengths."""

    def __init__(self, c: float = 1.0, alpha: float = 3.0, folds: int = 3, seed: int = 0) -> None:
        self.c, self.alpha, self.folds, self.seed = c, alpha, folds, seed

    def fit_lengths(self, x: Features, tokens: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        self.lengths = LogLengthRidge(self.alpha).fit(x, tokens)
        oof = np.zeros((len(x), len(self.lengths.columns)))
        for train_rows, held_rows in KFold(self.folds, shuffle=True, random_state=self.seed).split(oof):
            inner = LogLengthRidge(self.alpha).fit(x.rows(train_rows), tokens[train_rows], self.lengths.columns)
            oof[held_rows] = inner.predict(x.rows(held_rows))
        self.standardize = Standardizer().fit(oof)
        if oof.shape[1] == 0:  # no model has enough known lengths in these rows: the mean quality
            self.coef, self.bias = np.zeros((0, y.shape[1])), logit(column_means(y, weight))
            return
        self.coef, self.bias = _fit_logistic_columns(self.standardize(oof), y, weight, self.c)

    def predict(self, x: Features) -> np.ndarray:
        return sigmoid(self.standardize(self.lengths.predict(x)) @ self.coef + self.bias)
