"""Answer length per model, so a request's predicted cost is price x predicted tokens.

"mean": each model's mean training answer length (what RouterBench-style routers effectively use).
"ridge": ridge regression of log(1 + tokens) on the dense features per model; the prediction is the
log-normal mean exp(mu + s^2 / 2) - 1, since cost is linear in tokens and a median would under-bill."""

from __future__ import annotations

import numpy as np

from routers.choice import DEFAULT_OUTPUT_TOKENS
from routers.features.featurizer import Features
from routers.models.standardizer import Standardizer


class LengthModel:
    def __init__(self, kind: str = "ridge", alpha: float = 10.0) -> None:
        assert kind in ("mean", "ridge")
        self.kind, self.alpha = kind, alpha

    def fit(self, x: Features, tokens: np.ndarray) -> None:
        from sklearn.linear_model import Ridge  # training only: the request path runs without sklearn

        observed = ~np.isnan(tokens)
        self.means = np.array([tokens[observed[:, j], j].mean() if observed[:, j].any() else DEFAULT_OUTPUT_TOKENS
                               for j in range(tokens.shape[1])])
        self.known = observed.any(axis=0)
        if self.kind == "mean":
            return
        self.scaler = Standardizer().fit(x.dense)
        z = self.scaler(x.dense)
        # One matrix for all models: (dim, m) weights, (m,) intercepts, so a request is one product.
        self.coef = np.zeros((z.shape[1], tokens.shape[1]))
        self.intercept = np.log1p(self.means)
        self.residual_var = np.zeros(tokens.shape[1])
        self.fitted = np.zeros(tokens.shape[1], dtype=bool)
        for j in range(tokens.shape[1]):
            rows = np.flatnonzero(observed[:, j])
            if len(rows) < 10:
                continue
            target = np.log1p(tokens[rows, j])
            ridge = Ridge(alpha=self.alpha).fit(z[rows], target)
            self.coef[:, j], self.intercept[j] = ridge.coef_, ridge.intercept_
            self.residual_var[j] = float(np.var(target - ridge.predict(z[rows])))
            self.fitted[j] = True

    def predict(self, x: Features) -> np.ndarray:
        out = np.tile(self.means, (len(x), 1))
        if self.kind == "mean":
            return out
        predicted = np.expm1(self.scaler(x.dense) @ self.coef + self.intercept + self.residual_var / 2)
        return np.maximum(np.where(self.fitted, predicted, out), 0.0)
