"""Prompts without answer lengths, for distilling a small `listmle` ranker from a larger one.

The teacher scores them, so no answer is needed: MT-Bench's questions and LLMRouter's training
questions (router data sets under the same data root), plus any prompts the caller adds (the
training-split prompts of other length sets). `exclude` keeps out every prompt of the length data
being trained and evaluated on, its held-out prompts included (MT-Bench shares two prompts with
AlpacaEval)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from routers.data.catalog import load_long

SOURCES = ("mt_bench", "llmrouter")


def unlabeled_prompts(limit: int, exclude: Iterable[str], extra: Iterable[str] = (), seed: int = 0,
                      root: Path | None = None) -> list[str]:
    """Up to `limit` distinct prompts, drawn at random (seeded) from SOURCES and `extra`."""
    excluded = set(exclude)
    pool: set[str] = set(extra)
    for name in SOURCES:
        table, _ = load_long(name, root)
        pool.update(table.column("prompt").to_pylist())
    candidates = sorted(p for p in pool - excluded if p and p.strip())
    order = np.random.default_rng(seed).permutation(len(candidates))[:limit]
    return [candidates[i] for i in order]
