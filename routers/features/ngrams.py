"""Hashed word n-grams of the prompt's focus: a sparse bag of (1, 2)-grams in 2**bits buckets.

crc32 (not Python's salted hash) keeps bucket ids identical across processes and machines."""

from __future__ import annotations

import re
import zlib

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def ngram_buckets(text: str, bits: int = 18) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ids and l2-normalised log counts."""
    tokens = _TOKEN.findall(text.lower())
    grams = tokens + [a + " " + b for a, b in zip(tokens, tokens[1:], strict=False)]
    mask = (1 << bits) - 1
    counts: dict[int, int] = {}
    for gram in grams:
        bucket = zlib.crc32(gram.encode("utf-8")) & mask
        counts[bucket] = counts.get(bucket, 0) + 1
    ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
    values = np.log1p(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
    norm = float(np.linalg.norm(values))
    return ids, values / norm if norm > 0 else values
