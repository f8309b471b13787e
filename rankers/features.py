"""A ranker's input: the router's cheap features (routers/features/) plus instruction cues.

The gateway already computes the router's static embedding, prompt statistics and n-grams for a
request; a ranker with the same FeatureSpec reuses that Featurizer (same encoder table, same code),
adding only the cue vector (rankers/keywords.py). Dense block: [embedding views, statistics, cues];
sparse block: hashed n-grams of the prompt's focus."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from rankers.keywords import cue_features
from routers.features.featurizer import FeatureSpec, Featurizer
from routers.features.static import StaticEncoder
from routers.features.text import focus


@dataclass
class RankFeatures:
    dense: np.ndarray  # (n, d) float32
    sparse: sp.csr_matrix | None  # (n, 2**bits) or None

    def __len__(self) -> int:
        return len(self.dense)

    def rows(self, index: np.ndarray) -> RankFeatures:
        return RankFeatures(self.dense[index], None if self.sparse is None else self.sparse[index])


class RankFeaturizer:
    def __init__(self, spec: FeatureSpec, encoder: StaticEncoder | None = None) -> None:
        self.spec = spec
        self.base = Featurizer(spec, encoder)

    @property
    def encoder(self) -> StaticEncoder | None:
        return self.base.encoder

    def transform(self, prompts: Sequence[str]) -> RankFeatures:
        base = self.base.transform(prompts)
        cues = np.vstack([cue_features(focus(p)) for p in prompts]) if len(prompts) else np.zeros((0, 0))
        return RankFeatures(np.hstack([base.dense, cues]).astype(np.float32), base.sparse)

    def transform_one(self, prompt: str) -> RankFeatures:
        base = self.base.transform_one(prompt)
        cues = cue_features(focus(prompt))[None]
        return RankFeatures(np.hstack([base.dense, cues]).astype(np.float32), base.sparse)

    def __getstate__(self) -> dict:
        # The encoder table (MBs) is not pickled into artifacts; the loader re-attaches it.
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.spec = state["spec"]
        self.base = Featurizer(self.spec, None) if self.spec.encoder != "static" else None  # type: ignore[assignment]

    def attach(self, encoder: StaticEncoder | None) -> None:
        self.base = Featurizer(self.spec, encoder)
