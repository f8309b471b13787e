"""The semantic response cache (`cache.semantic:`, off unless set): a chat whose last user message means
the same as one answered before gets that answer, after the exact cache found none
(gateway/response_cache.py, which keeps the answers and serves them).

A match shares everything but the compared text (gateway/semantic_text.py): the bucket is the exact
cache's key of the request with the last user message taken out, plus the encoder's name, so the model,
endpoint, API key scope, sampling, tools, system prompt and earlier turns are all equal. Within the
bucket the entry whose embedding is the most similar, at or above `similarity_threshold`, whose
literals pass the guard and whose answer is still kept, is served (`x-pitstop-cache: semantic-hit`).
Only requests the exact cache applies to, never embeddings."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.cache_stores import CacheStore, CacheUnavailable, RedisCacheStore
from gateway.embedders import EmbedderError, Serve
from gateway.semantic_config import SemanticCacheConfig
from gateway.semantic_encoders import ModelText, TextEncoder, build_encoder
from gateway.semantic_index import Candidate, LocalSemanticIndex, Search
from gateway.semantic_redis import RedisSemanticIndex
from gateway.semantic_text import compared_part, embedded, fingerprint

if TYPE_CHECKING:
    from gateway.auth import Caller
    from gateway.outcomes import OutcomeDraft

log = logging.getLogger("pitstop.cache")
SIMILARITY_HEADER = "x-pitstop-cache-similarity"
_SIMILARITY_BUCKETS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)
_ENCODE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class SemanticMetrics:
    """Registered only where `cache.semantic` is set: a gateway without it shows none of them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # hit (served), miss, guarded (an entry was similar enough but its literals differed), skipped (no
        # text to compare, or too long), stored, error (the encoder or Redis failed: a miss).
        self.outcomes = Counter("pitstop_semantic_cache", "Semantic cache lookups and writes by outcome",
                                ["outcome"], registry=registry)
        # The best similarity a lookup found in its bucket: where the threshold cuts, on this traffic.
        self.similarity = Histogram("pitstop_semantic_cache_best_similarity",
                                    "Best cosine similarity found by a semantic cache lookup",
                                    buckets=_SIMILARITY_BUCKETS, registry=registry)
        self.encode = Histogram("pitstop_semantic_cache_encode_seconds", "Time to embed a compared text",
                                buckets=_ENCODE_BUCKETS, registry=registry)


class SemanticIndex(Protocol):
    async def search(self, name: str, vector: np.ndarray, print_: bytes, threshold: float) -> Search: ...

    async def add(self, name: str, key: str, vector: np.ndarray, print_: bytes, ttl_s: float) -> None: ...

    def served(self, name: str, key: str) -> None: ...

    async def forget(self, name: str, keys: list[str]) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def close(self) -> None: ...


@dataclass
class SemanticProbe:
    """A request's part in the semantic cache: its bucket, its text as embedded and its fingerprint; its
    vector once encoded (at the lookup, or at the write where the request skipped the lookup)."""

    bucket: str
    text: str
    print_: bytes
    caller: Caller | None = field(default=None, repr=False)
    vector: np.ndarray | None = field(default=None, repr=False)


class SemanticCache:
    def __init__(self, config: SemanticCacheConfig, index: SemanticIndex, encoder: TextEncoder,
                 metrics: SemanticMetrics) -> None:
        self.config = config
        self.index = index
        self.encoder = encoder
        self.metrics = metrics
        self._warming: asyncio.Task | None = None

    @classmethod
    def build(cls, config: SemanticCacheConfig, store: CacheStore, registry: CollectorRegistry) -> SemanticCache | None:
        encoder = build_encoder(config.encoder)
        if encoder is None:
            return None
        index: SemanticIndex = (RedisSemanticIndex(store, config.max_entries, config.max_total_entries)
                                if isinstance(store, RedisCacheStore)
                                else LocalSemanticIndex(config.max_entries, config.max_total_entries))
        return cls(config, index, encoder, SemanticMetrics(registry))

    def probe(self, draft: OutcomeDraft, key_of: _KeyOf) -> SemanticProbe | None:
        """The request's probe; None where it has no text to compare (or one too long to)."""
        assert draft.request is not None
        compared = compared_part(draft.request.kind, draft.request.body)
        if compared is None or len(compared.text) > self.config.max_text_chars:
            self.metrics.outcomes.labels("skipped").inc()
            return None
        text = embedded(compared.text)
        if not text:
            self.metrics.outcomes.labels("skipped").inc()
            return None
        bucket = key_of(draft, compared.rest, f"semantic:{self.encoder.name}")
        return SemanticProbe(bucket, text, fingerprint(compared.text), draft.caller)

    async def candidates(self, probe: SemanticProbe) -> list[Candidate]:
        """The kept answers' keys worth reading, best first; none where the encoder or the index failed."""
        try:
            vector = await self._vector(probe)
            found = await self.index.search(probe.bucket, vector, probe.print_, self.config.similarity_threshold)
        except (CacheUnavailable, EmbedderError) as exc:
            log.debug("semantic cache lookup failed: %s", exc)
            self.metrics.outcomes.labels("error").inc()
            return []
        if found.best is not None:
            self.metrics.similarity.observe(found.best)
        if not found.candidates:
            self.metrics.outcomes.labels("guarded" if found.guarded else "miss").inc()
        return found.candidates

    def served(self, probe: SemanticProbe, candidate: Candidate) -> None:
        self.metrics.outcomes.labels("hit").inc()
        self.index.served(probe.bucket, candidate.key)

    async def gone(self, probe: SemanticProbe, keys: list[str]) -> None:
        """The candidates' answers were all gone or too old: a miss; entries without an answer go."""
        self.metrics.outcomes.labels("miss").inc()
        if keys:
            await self.index.forget(probe.bucket, keys)

    async def add(self, probe: SemanticProbe, key: str, ttl_s: float) -> None:
        """Index an answer just kept under `key` by the exact cache."""
        try:
            vector = await self._vector(probe)
            await self.index.add(probe.bucket, key, vector, probe.print_, ttl_s)
        except (CacheUnavailable, EmbedderError) as exc:
            log.debug("semantic cache write failed: %s", exc)
            self.metrics.outcomes.labels("error").inc()
            return
        self.metrics.outcomes.labels("stored").inc()

    async def _vector(self, probe: SemanticProbe) -> np.ndarray:
        if probe.vector is None:
            started = time.perf_counter()
            probe.vector = await self.encoder.encode(probe.text, probe.caller)
            self.metrics.encode.observe(time.perf_counter() - started)
        return probe.vector

    async def flush(self, model: str | None = None) -> int:
        return await self.index.delete_prefix("" if model is None else f"{model}:")

    def connect(self, serve: Serve) -> None:
        """How a model encoder calls its model (set by the app: gateway/app.py)."""
        if isinstance(self.encoder, ModelText):
            self.encoder.serve = serve

    def start(self) -> None:
        """Load the encoder beside serving, so the first lookup does not wait for it."""
        self._warming = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        try:
            await asyncio.to_thread(self.encoder.warm)
        except Exception:
            log.exception("the semantic cache's encoder failed to load; lookups will try again")

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        await self.index.close()


class _KeyOf(Protocol):
    def __call__(self, draft: OutcomeDraft, body: dict, variant: str = "") -> str: ...
