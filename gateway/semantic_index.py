"""The semantic cache's index in this replica's memory: per bucket a matrix of unit vectors, searched by
one matrix-vector product. An entry names the exact cache's key of its answer (gateway/response_cache.py
keeps the answers: one budget, one expiry, one flush), its fingerprint for the guard
(gateway/semantic_text.py) and when it expires. A bucket keeps at most `max_entries` (the least recently
served out first), all buckets together `max_total` (the least recently used bucket out first)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from gateway.semantic_text import compatible

CANDIDATES = 3  # answers read for a lookup at most: the best ones above the threshold that pass the guard


@dataclass
class Candidate:
    key: str  # the exact cache's key of the kept answer
    similarity: float


@dataclass
class Search:
    candidates: list[Candidate]  # above the threshold and through the guard, best first
    best: float | None  # the highest similarity in the bucket (None: an empty bucket)
    guarded: bool  # some entry above the threshold failed the guard


@dataclass
class Bucket:
    dim: int
    vectors: np.ndarray = field(init=False)  # (capacity, dim) float32; rows [0, len) are entries
    keys: list[str] = field(default_factory=list)
    prints: list[bytes] = field(default_factory=list)
    expires: list[float] = field(default_factory=list)  # wall clock (entries from Redis come from other replicas)
    used: list[float] = field(default_factory=list)  # monotonic: when last written or served
    seen: int = -1  # where this is a copy of a Redis bucket: the write counter it was read at

    def __post_init__(self) -> None:
        self.vectors = np.zeros((8, self.dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, key: str, vector: np.ndarray, print_: bytes, expires: float) -> None:
        if len(self) == len(self.vectors):
            self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
        self.vectors[len(self)] = vector
        self.keys.append(key)
        self.prints.append(print_)
        self.expires.append(expires)
        self.used.append(time.monotonic())

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (ascending: the order of insertion is kept)."""
        if len(rows) == len(self):
            return
        self.vectors[:len(rows)] = self.vectors[rows]
        self.keys, self.prints = [self.keys[i] for i in rows], [self.prints[i] for i in rows]
        self.expires, self.used = [self.expires[i] for i in rows], [self.used[i] for i in rows]

    def search(self, vector: np.ndarray, print_: bytes, threshold: float) -> Search:
        now = time.time()
        live = [i for i, expires in enumerate(self.expires) if expires > now]
        self.keep(live)
        if not self.keys:
            return Search([], None, False)
        similarity = self.vectors[:len(self)] @ vector
        above = np.flatnonzero(similarity >= threshold)
        candidates, guarded = [], False
        for i in above[np.argsort(-similarity[above], kind="stable")]:
            if not compatible(self.prints[i], print_):
                guarded = True
                continue
            candidates.append(Candidate(self.keys[i], float(similarity[i])))
            if len(candidates) == CANDIDATES:
                break
        return Search(candidates, float(similarity.max()), guarded)


class LocalSemanticIndex:
    def __init__(self, max_entries: int, max_total: int) -> None:
        assert max_total >= max_entries
        self.max_entries, self.max_total = max_entries, max_total
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()

    @property
    def entries(self) -> int:
        return sum(len(b) for b in self.buckets.values())

    def bucket(self, name: str, dim: int) -> Bucket:
        """The bucket, made if missing (most recently used now)."""
        found = self.buckets.get(name)
        if found is None or found.dim != dim:
            found = self.buckets[name] = Bucket(dim)
        self.buckets.move_to_end(name)
        return found

    async def search(self, name: str, vector: np.ndarray, print_: bytes, threshold: float) -> Search:
        found = self.buckets.get(name)
        if found is None:
            return Search([], None, False)
        self.buckets.move_to_end(name)
        return found.search(vector, print_, threshold)

    async def add(self, name: str, key: str, vector: np.ndarray, print_: bytes, ttl_s: float) -> None:
        bucket = self.bucket(name, len(vector))
        rows = [i for i, k in enumerate(bucket.keys) if k != key]  # the same request kept again: once
        if len(rows) >= self.max_entries:  # the least recently served (or written) go
            rows.sort(key=lambda i: bucket.used[i])
            rows = sorted(rows[len(rows) - self.max_entries + 1:])
        bucket.keep(rows)
        bucket.append(key, vector, print_, time.time() + ttl_s)
        self.trim()

    def trim(self) -> None:
        total = self.entries
        while total > self.max_total and len(self.buckets) > 1:
            _, dropped = self.buckets.popitem(last=False)
            total -= len(dropped)

    def served(self, name: str, key: str) -> None:
        bucket = self.buckets.get(name)
        if bucket is not None and key in bucket.keys:
            bucket.used[bucket.keys.index(key)] = time.monotonic()

    async def forget(self, name: str, keys: list[str]) -> None:
        """Entries whose answers are gone from the exact cache (evicted, flushed)."""
        bucket = self.buckets.get(name)
        if bucket is not None:
            bucket.keep([i for i, k in enumerate(bucket.keys) if k not in keys])

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [name for name in self.buckets if name.startswith(prefix)]
        return sum(len(self.buckets.pop(name)) for name in doomed)

    async def close(self) -> None:
        self.buckets.clear()
