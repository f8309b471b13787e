"""Static sentence embeddings: a weighted mean of per-token vectors, no transformer at request time.

The table is distilled offline from all-MiniLM-L6-v2 (routers/features/distill.py); encoding is a
fast WordPiece pass (routers/features/wordpiece.py) plus one gather and a weighted sum, well under
0.2 ms for a long prompt, where the transformer takes 15-150 ms on one core. Stored as one .npz
(float16 table)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routers.features.wordpiece import FastWordPiece

MAX_TOKENS = 2048  # a request longer than this is embedded by its last MAX_TOKENS tokens


@dataclass
class StaticEncoder:
    table: np.ndarray  # (vocab, dim) float32
    token_weight: np.ndarray  # (vocab,) float32
    meta: dict[str, object]
    tokenizer: FastWordPiece | None = None  # rebuilt on load, never pickled

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def token_ids(self, text: str) -> np.ndarray:
        if self.tokenizer is None:
            self.tokenizer = FastWordPiece()
        return self.tokenizer.ids(text)[-MAX_TOKENS:]

    def pool(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros(self.dim, dtype=np.float32)
        w = self.token_weight[ids]
        v = w @ self.table[ids]
        norm = float(np.linalg.norm(v))
        return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)

    def encode_one(self, text: str) -> np.ndarray:
        return self.pool(self.token_ids(text))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self.encode_one(text)
        return out

    def save(self, path: str | Path) -> str:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, table=self.table.astype(np.float16), token_weight=self.token_weight,
                                meta=np.array(json.dumps(self.meta)))
        return hashlib.sha256(path.read_bytes()).hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> StaticEncoder:
        path = Path(path)
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            return cls(z["table"].astype(np.float32), z["token_weight"].astype(np.float32), meta)
