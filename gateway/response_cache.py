"""The response cache: an answer kept and served again to the same request, without the upstream call.

For offline jobs above all (an evaluation run again, a batch with repeated lines, a training set
regenerated), and for embeddings, whose answers never change. Which requests: `cache.requests` in the
config (`deterministic`: embeddings, and answers at temperature 0, with top_k 1, or with a seed; `all`;
`opt_in`), and each request's own say, as litellm's proxy reads it: the body field `cache` (`use-cache`,
`no-cache`: do not read a kept answer, `no-store`, `ttl`, `s-maxage`: only a kept answer younger than
this) or the same directives in the header `x-pitstop-cache` (any API, the Responses and Messages APIs too).

The key is the request as it goes upstream, after routing: the model that was chosen for it (so a
router that changes its mind changes the key), the endpoint, and every field that shapes the answer
(messages, tools, sampling, max_tokens, ...; not `stream`, `user`, `metadata` and the like), scoped to
the API key unless `shared_across_keys`. Identical requests in flight at once on one replica are
answered by one upstream call: the later ones wait for the first one's answer (`coalesced`).
Embeddings are kept one entry an input instead (gateway/embedding_cache.py); a cross-encoder's rerank
whole, as it was served (gateway/rerank.py). Where `cache.semantic` is set, a chat the exact cache has no
answer for may get the answer of one whose last user message means the same (gateway/semantic_cache.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from gateway.backends.base import Kind
from gateway.cache_control import CACHE_FIELD, CacheControl
from gateway.cache_stores import CacheStore, CacheUnavailable, LocalCacheStore, RedisCacheStore
from gateway.config import Settings
from gateway.section_config import CacheConfig
from gateway.semantic_cache import SemanticCache, SemanticProbe

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.outcomes import OutcomeDraft

log = logging.getLogger("pitstop.cache")
KEY_VERSION = 1  # part of every key: a change to what an entry holds starts a fresh cache
# Fields that do not change the answer: left out of the key, so a streamed request and a whole one share it.
_NOT_IN_KEY = frozenset({"model", "stream", "stream_options", "user", "metadata", "prompt_cache_key", "store",
                         "service_tier", "safety_identifier", CACHE_FIELD})


def wanted(config: CacheConfig, kind: Kind, body: dict, control: CacheControl) -> bool:
    """Does the cache apply to this request? The request's `use-cache` decides where it gives one."""
    if control.use is not None:
        return control.use
    if config.requests == "opt_in":
        return False
    if config.requests == "all" or kind == "embedding":
        return True
    return body.get("temperature") == 0 or body.get("top_k") == 1 or body.get("seed") is not None


def cache_key(scope: str, kind: Kind, model: str, body: dict, upstream: str = "", variant: str = "") -> str:
    """`<model>:<digest>`: the model first, so its entries can be flushed together. `upstream` names
    what serves the model (its deployments' provider models), so pointing a model name at another
    model in the config starts it afresh. `variant` sets other keys apart (the semantic cache's buckets)."""
    shaping = {name: value for name, value in body.items() if name not in _NOT_IN_KEY}
    parts = [KEY_VERSION, scope, kind, model, upstream, shaping, *([variant] if variant else [])]
    return f"{model}:{hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()}"


@dataclass
class CachedAnswer:
    model: str  # the model that answered (a route group's verification may have served another)
    created: float  # wall clock, when it was kept
    body: bytes  # the answer's JSON, as it was served
    expires: float | None = None  # wall clock, when the store lets it go (a copy must not outlive it)

    def encode(self) -> bytes:
        meta = {"model": self.model, "created": self.created, **({"expires": self.expires} if self.expires else {})}
        return orjson.dumps(meta) + b"\n" + self.body

    @classmethod
    def decode(cls, blob: bytes) -> CachedAnswer:
        head, _, body = blob.partition(b"\n")
        meta = orjson.loads(head)
        return cls(meta["model"], float(meta["created"]), body, meta.get("expires"))

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.created)


@dataclass
class CacheTicket:
    """A request the cache applies to: its key, its say, and, for the first of identical requests in
    flight, the future the later ones wait on. It is listed from before the store is read until its
    answer is written there (or it ends without one), so a request on this replica never finds neither."""

    key: str
    control: CacheControl
    semantic: SemanticProbe | None = None  # where the semantic cache applies too
    leading: asyncio.Future[CachedAnswer | None] | None = None
    inflight: dict[str, asyncio.Future[CachedAnswer | None]] = field(default_factory=dict, repr=False)

    def lead(self) -> None:
        self.leading = self.inflight[self.key] = asyncio.get_running_loop().create_future()

    def resolve(self, answer: CachedAnswer | None) -> None:
        if self.leading is not None and not self.leading.done():
            self.leading.set_result(answer)

    def unlist(self) -> None:
        if self.leading is not None and self.inflight.get(self.key) is self.leading:
            del self.inflight[self.key]

    def settle(self) -> None:
        """At the request's end: without an answer kept, the requests waiting ask for themselves."""
        if self.leading is not None and not self.leading.done():
            self.leading.set_result(None)
            self.unlist()


def cache_upstreams(settings: Settings) -> dict[str, str]:
    """Each listed model's upstream models, part of its answers' keys: a model served by something else
    after a reload (gateway/config_reload.py) finds none of the answers kept before."""
    served_by: dict[str, set[str]] = {}
    for entry in settings.model_list:
        served_by.setdefault(entry.model_name, set()).add(entry.litellm_params.model)
    return {model: ",".join(sorted(names)) for model, names in served_by.items()}


class ResponseCache:
    def __init__(self, config: CacheConfig, store: CacheStore, metrics: GatewayMetrics,
                 upstreams: dict[str, str] | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.upstreams = upstreams or {}  # model name -> what serves it (part of its keys)
        self.semantic: SemanticCache | None = None  # cache.semantic: similar requests served too
        self._inflight: dict[str, asyncio.Future[CachedAnswer | None]] = {}

    @classmethod
    def build(cls, settings: Settings, metrics: GatewayMetrics) -> ResponseCache:
        config = settings.cache
        assert config is not None
        upstreams = cache_upstreams(settings)
        if config.backend == "redis":
            assert settings.redis_url is not None  # the config checks it
            cache = cls(config, RedisCacheStore(settings.redis_url), metrics, upstreams)
        else:
            cache = cls(config, LocalCacheStore(config.max_bytes), metrics, upstreams)
        if config.semantic is not None:
            cache.semantic = SemanticCache.build(config.semantic, cache.store, metrics.registry)
        return cache

    def key(self, draft: OutcomeDraft, body: dict, variant: str = "") -> str:
        """The key of `body` (the draft's request, or one embeddings input of it) on its routed model."""
        assert draft.request is not None and draft.route is not None
        model = draft.route.model_name
        return cache_key(self.scope(draft), draft.request.kind, model, body, self.upstreams.get(model, ""), variant)

    async def flush(self, model: str | None = None) -> dict[str, int]:
        """Drop every kept answer, or one model's, and the semantic index's entries; how many went."""
        deleted = {"deleted": await self.store.delete_prefix("" if model is None else f"{model}:")}
        if isinstance(self.store, LocalCacheStore):
            self.metrics.cache_bytes.set(self.store.bytes)
        if self.semantic is not None:
            deleted["semantic_deleted"] = await self.semantic.flush(model)
        return deleted

    def applies(self, draft: OutcomeDraft) -> bool:
        assert draft.request is not None
        return wanted(self.config, draft.request.kind, draft.request.body, draft.request.cache)

    def scope(self, draft: OutcomeDraft) -> str:
        """Whose answers the request may read: its API key's, or everyone's (`shared_across_keys`)."""
        assert draft.caller is not None
        return "*" if self.config.shared_across_keys else (draft.caller.key_id or "-")

    async def look_up(self, draft: OutcomeDraft, keyed: dict | None = None, variant: str = "") -> CachedAnswer | None:
        """The kept answer for the draft's request, routed and admitted; None (and a ticket on the draft,
        where the cache applies) when it must be served. `keyed`: what the key is made of where it is not
        the request's body (a cross-encoder's rerank, gateway/rerank.py), under its own `variant`."""
        assert draft.request is not None and draft.route is not None
        request = draft.request
        control = request.cache
        if (request.kind == "embedding" and keyed is None) or not self.applies(draft):  # embeddings: per input
            return None
        ticket = CacheTicket(self.key(draft, request.body if keyed is None else keyed, variant), control,
                             inflight=self._inflight)
        if self.semantic is not None and keyed is None and not (control.no_cache and control.no_store):
            ticket.semantic = self.semantic.probe(draft, self.key)
        draft.cache = ticket
        leader = self._inflight.get(ticket.key)
        if leader is not None and not control.no_cache:  # the same request is being answered here now
            found = await asyncio.shield(leader)
            if found is not None and self._young_enough(found, control):
                draft.extra["cache"] = "coalesced"
                self.metrics.cache.labels("coalesced").inc()
                return found
        if ticket.key not in self._inflight:  # listed before the read: the next one waits on this one
            ticket.lead()
        if not control.no_cache:
            found = await self._read(ticket)
            if found is not None:
                draft.extra["cache"] = "hit"
            elif ticket.semantic is not None:
                found = await self._read_similar(draft, ticket)
                if found is not None:
                    await self._keep_copy(ticket, found)
            if found is not None:
                ticket.resolve(found)
                ticket.unlist()
                return found
        draft.extra["cache"] = "miss"
        self.metrics.cache.labels("miss").inc()
        return None

    async def _keep_copy(self, ticket: CacheTicket, found: CachedAnswer) -> None:
        """A semantic hit's answer kept under the request's own key too, until the original goes: the same
        request again is an exact hit (a store read, where the semantic one encodes and searches)."""
        left_s = (found.expires or 0.0) - time.time()
        if ticket.control.no_store or left_s <= 0:  # an entry from before `expires` was kept: not copied
            return
        try:
            await self.store.put(ticket.key, found.encode(), left_s)
        except CacheUnavailable:
            self.metrics.cache.labels("error").inc()
            return
        self.metrics.cache.labels("copied").inc()

    async def _read(self, ticket: CacheTicket) -> CachedAnswer | None:
        try:
            blob = await self.store.get(ticket.key)
        except CacheUnavailable:
            self.metrics.cache.labels("error").inc()
            return None
        found = self._decoded(ticket.key, blob, ticket.control)
        if found is not None:
            self.metrics.cache.labels("hit").inc()
        return found

    async def _read_similar(self, draft: OutcomeDraft, ticket: CacheTicket) -> CachedAnswer | None:
        """The kept answer of the most similar request that passes the guard, if any is still kept."""
        semantic, probe = self.semantic, ticket.semantic
        assert semantic is not None and probe is not None
        candidates = await semantic.candidates(probe)
        if not candidates:
            return None
        try:
            blobs = await self.store.get_many([c.key for c in candidates])
        except CacheUnavailable:
            self.metrics.cache.labels("error").inc()
            return None
        for candidate, blob in zip(candidates, blobs, strict=True):
            found = self._decoded(candidate.key, blob, ticket.control)
            if found is not None:
                semantic.served(probe, candidate)
                self.metrics.cache.labels("semantic_hit").inc()
                draft.extra["cache"], draft.extra["cache_similarity"] = "semantic-hit", round(candidate.similarity, 4)
                return found
        await semantic.gone(probe, [c.key for c, blob in zip(candidates, blobs, strict=True) if blob is None])
        return None

    def _decoded(self, key: str, blob: bytes | None, control: CacheControl) -> CachedAnswer | None:
        if blob is None:
            return None
        try:
            found = CachedAnswer.decode(blob)
        except (ValueError, KeyError, TypeError):
            log.warning("response cache: entry %s is unreadable; served afresh", key)
            return None
        return found if self._young_enough(found, control) else None

    async def read_many(self, keys: list[str], control: CacheControl) -> list[CachedAnswer | None]:
        """The entries under `keys` (an embeddings request's inputs), in one round trip; None for each
        one missing, too old, or all of them when the store fails (counted per input)."""
        if control.no_cache:
            found: list[CachedAnswer | None] = [None] * len(keys)
        else:
            try:
                blobs = await self.store.get_many(keys)
            except CacheUnavailable:
                self.metrics.cache.labels("error").inc()
                blobs = [None] * len(keys)
            found = [self._decoded(key, blob, control) for key, blob in zip(keys, blobs, strict=True)]
        hits = sum(f is not None for f in found)
        self.metrics.cache.labels("hit").inc(hits)
        self.metrics.cache.labels("miss").inc(len(keys) - hits)
        return found

    async def keep_many(self, keys: list[str], bodies: list[bytes], model: str, control: CacheControl) -> None:
        """Keep an embeddings request's new vectors, one entry an input, in one round trip."""
        if control.no_store or not keys:
            return
        now = time.time()
        entries = [(key, blob) for key, body in zip(keys, bodies, strict=True)
                   if len(blob := CachedAnswer(model, now, body).encode()) <= self.config.max_entry_bytes]
        self.metrics.cache.labels("too_large").inc(len(keys) - len(entries))
        try:
            await self.store.put_many(entries, control.ttl_s or self.config.ttl_s)
        except CacheUnavailable:
            self.metrics.cache.labels("error").inc()
            return
        self.metrics.cache.labels("stored").inc(len(entries))
        if isinstance(self.store, LocalCacheStore):
            self.metrics.cache_bytes.set(self.store.bytes)

    @staticmethod
    def _young_enough(found: CachedAnswer, control: CacheControl) -> bool:
        return control.max_age_s is None or found.age_s <= control.max_age_s

    async def keep(self, ticket: CacheTicket, model: str, body: bytes) -> None:
        """Keep a served answer, before it goes out (so the client's next request, on any replica, finds
        it); the requests waiting on it get it at once."""
        ttl_s = ticket.control.ttl_s or self.config.ttl_s
        now = time.time()
        answer = CachedAnswer(model, now, body, now + ttl_s)
        ticket.resolve(answer)
        try:
            blob = answer.encode()
            if ticket.control.no_store:
                return
            if len(blob) > self.config.max_entry_bytes:
                self.metrics.cache.labels("too_large").inc()
                return
            try:
                await self.store.put(ticket.key, blob, ttl_s)
            except CacheUnavailable:
                self.metrics.cache.labels("error").inc()
                return
            self.metrics.cache.labels("stored").inc()
            if isinstance(self.store, LocalCacheStore):
                self.metrics.cache_bytes.set(self.store.bytes)
            if self.semantic is not None and ticket.semantic is not None:  # found by meaning from now on
                await self.semantic.add(ticket.semantic, ticket.key, ttl_s)
        finally:
            ticket.unlist()

    def start(self) -> None:
        if self.semantic is not None:
            self.semantic.start()

    async def close(self) -> None:
        if self.semantic is not None:
            await self.semantic.close()
        await self.store.close()
