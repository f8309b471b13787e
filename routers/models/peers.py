"""The published router families, as quality models over one feature matrix.

kNN and MLP as in RouterBench (Hu et al. 2024), a random forest on embeddings as NotDiamond's RoRF,
logistic regression and LightGBM per model. Each predicts every trained model's success probability;
the shared choice rule (routers/choice.py) turns that into a decision."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from routers.features.featurizer import Features
from routers.models.quality import column_means, per_model, soft_label_rows
from routers.models.standardizer import Standardizer  # artifacts pickled before it moved name it here


def _predict_columns(fitted: list[object | float], n: int, predict_one) -> np.ndarray:
    out = np.empty((n, len(fitted)))
    for j, model in enumerate(fitted):
        out[:, j] = model if isinstance(model, float) else predict_one(model)
    return np.clip(out, 0.0, 1.0)


class KnnQuality:
    """Mean label of the k nearest training prompts (cosine), per model."""

    def __init__(self, k: int = 10) -> None:
        self.k = k

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        self.index = NearestNeighbors(n_neighbors=min(self.k, len(y)), metric="cosine", algorithm="brute")
        self.index.fit(x.dense)
        self.y, self.prior = y, column_means(y, weight)

    def predict(self, x: Features) -> np.ndarray:
        _, neighbours = self.index.kneighbors(x.dense)
        labels = self.y[neighbours]  # (n, k, m)
        seen = (~np.isnan(labels)).sum(axis=1)
        sums = np.nansum(labels, axis=1)
        return np.where(seen > 0, sums / np.maximum(seen, 1), self.prior)


class LogisticQuality:
    def __init__(self, c: float = 1.0) -> None:
        self.c = c

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        # Embeddings are used as they are (unit rows, the published recipe); statistics are standardised.
        self.scaler = Standardizer().fit(x.dense, columns=x.blocks.get("stats", slice(0, 0)))
        z = self.scaler(x.dense)

        def fit_one(j: int, rows: np.ndarray, values: np.ndarray) -> LogisticRegression:
            xs, labels, w = soft_label_rows(z[rows], values, weight[rows, j])
            return LogisticRegression(C=self.c, max_iter=2000).fit(xs, labels, sample_weight=w)

        self.models = per_model(y, fit_one)

    def predict(self, x: Features) -> np.ndarray:
        z = self.scaler(x.dense)
        return _predict_columns(self.models, len(z), lambda m: m.predict_proba(z)[:, 1])


class ForestQuality:
    """RoRF-style random forest on the embedding, one regressor per model (handles soft labels)."""

    def __init__(self, trees: int = 100, min_leaf: int = 5, seed: int = 0) -> None:
        self.trees, self.min_leaf, self.seed = trees, min_leaf, seed

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        def fit_one(j: int, rows: np.ndarray, values: np.ndarray) -> RandomForestRegressor:
            forest = RandomForestRegressor(n_estimators=self.trees, min_samples_leaf=self.min_leaf,
                                           max_features="sqrt", n_jobs=2, random_state=self.seed)
            return forest.fit(x.dense[rows], values, sample_weight=weight[rows, j])

        self.models = per_model(y, fit_one)
        for model in self.models:
            if not isinstance(model, float):
                model.set_params(n_jobs=1)  # one core per request at inference

    def predict(self, x: Features) -> np.ndarray:
        return _predict_columns(self.models, len(x), lambda m: m.predict(x.dense))


class LightGBMQuality:
    """Gradient-boosted trees per model, cross-entropy objective (soft labels allowed)."""

    def __init__(self, rounds: int = 200, leaves: int = 15, learning_rate: float = 0.05, seed: int = 0) -> None:
        self.params = {"objective": "cross_entropy", "num_leaves": leaves, "learning_rate": learning_rate,
                       "min_data_in_leaf": 20, "feature_fraction": 0.5, "bagging_fraction": 0.8,
                       "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": seed, "num_threads": 2}
        self.rounds = rounds

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        def fit_one(j: int, rows: np.ndarray, values: np.ndarray) -> lgb.Booster:
            data = lgb.Dataset(x.dense[rows], values, weight=weight[rows, j])
            return lgb.train(self.params, data, num_boost_round=self.rounds)

        self.models = per_model(y, fit_one)

    def predict(self, x: Features) -> np.ndarray:
        return _predict_columns(self.models, len(x), lambda m: m.predict(x.dense, num_threads=1))
