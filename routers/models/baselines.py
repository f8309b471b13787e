"""Reference points every report carries: a random router and the zero router.

Zero router (RouterBench): no look at the prompt; each model's mean training quality. Sweeping the cost
preference walks it along the single models, and its hull is the line of random mixes of them.
Random: an independent uniform quality per model and request, so its choices ignore quality entirely.
The oracle needs the true outcomes and lives in the evaluation harness."""

from __future__ import annotations

import zlib

import numpy as np

from routers.features.featurizer import Features
from routers.models.quality import column_means


class ZeroQuality:
    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        self.means = column_means(y, weight)

    def predict(self, x: Features) -> np.ndarray:
        return np.tile(self.means, (len(x), 1))


class RandomQuality:
    """Seeded by the request's features, so the same request gets the same draw in every run."""

    def fit(self, x: Features, y: np.ndarray, weight: np.ndarray) -> None:
        self.models = y.shape[1]

    def predict(self, x: Features) -> np.ndarray:
        out = np.empty((len(x), self.models))
        for i, row in enumerate(x.dense):
            seed = zlib.crc32(np.ascontiguousarray(row).tobytes())
            out[i] = np.random.default_rng(seed).random(self.models)
        return out
