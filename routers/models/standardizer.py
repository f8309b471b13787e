"""Column standardization shared by the routers' models (a module of its own: the request path imports it
without the peers' libraries)."""

from __future__ import annotations

import numpy as np


class Standardizer:
    """Zero mean, unit variance per column; with `columns`, only those (the rest pass through)."""

    def fit(self, x: np.ndarray, columns: slice | None = None) -> Standardizer:
        std = x.std(axis=0)
        self.mean = x.mean(axis=0)
        self.scale = np.where(std > 1e-8, std, 1.0)
        if columns is not None:
            keep = np.zeros(x.shape[1], dtype=bool)
            keep[columns] = True
            self.mean = np.where(keep, self.mean, 0.0)
            self.scale = np.where(keep, self.scale, 1.0)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)
