"""Where the response cache keeps answers (gateway/response_cache.py): this replica's memory, least
recently used first out past a byte budget, or Redis, shared by every replica and expired by Redis.

A store holds opaque bytes under a key with a time to live. Redis going away must cost the request
nothing but the cache: a store that fails answers as a miss, and stays out of the way for a few
seconds (`RETRY_AFTER_S`) rather than making every request wait out a timeout."""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger("pitstop.cache")
T = TypeVar("T")
RETRY_AFTER_S = 5.0  # after a Redis error, how long requests skip the cache before trying Redis again
REDIS_TIMEOUT_S = 0.25  # a lookup that takes longer costs the request more than the cache saves it


class CacheUnavailable(Exception):
    """The store could not be read or written (Redis away, or resting after an error)."""


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def put_many(self, entries: list[tuple[str, bytes]], ttl_s: float) -> None: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def close(self) -> None: ...


class LocalCacheStore:
    """An LRU of entries in this process, bounded by their total size; expired entries are dropped when
    read, or when the budget needs their room."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def put_many(self, entries: list[tuple[str, bytes]], ttl_s: float) -> None:
        for key, value in entries:
            await self.put(key, value, ttl_s)

    async def delete_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(value)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


class RedisCacheStore:
    """Entries under `pitstop:cache:<key>` with Redis's own expiry (its `maxmemory-policy` decides what
    goes when it is full). Every replica on the same Redis reads every replica's answers."""

    PREFIX = "pitstop:cache:"

    def __init__(self, url: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        from redis import asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                               retry=Retry(NoBackoff(), 0))
        self._resting_until = 0.0

    async def get(self, key: str) -> bytes | None:
        self._check_awake()
        try:
            return await self._client.get(self.PREFIX + key)
        except Exception as exc:
            raise self._rest(exc) from None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._check_awake()
        try:
            await self._client.set(self.PREFIX + key, value, px=max(1, round(ttl_s * 1000)))
        except Exception as exc:
            raise self._rest(exc) from None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """One round trip (MGET), whatever the number of keys."""
        self._check_awake()
        try:
            return await self._client.mget([self.PREFIX + key for key in keys])
        except Exception as exc:
            raise self._rest(exc) from None

    async def put_many(self, entries: list[tuple[str, bytes]], ttl_s: float) -> None:
        """One round trip: the SETs pipelined, not in a transaction (each entry stands alone)."""
        self._check_awake()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in entries:
                    pipe.set(self.PREFIX + key, value, px=max(1, round(ttl_s * 1000)))
                await pipe.execute()
        except Exception as exc:
            raise self._rest(exc) from None

    async def delete_prefix(self, prefix: str) -> int:
        """Every entry whose key starts with `prefix`, found by SCAN (never KEYS, which stops Redis) and
        unlinked a page at a time. Raises CacheUnavailable, as a flush cannot be skipped."""
        deleted = 0
        try:
            async for page in scan_pages(self._client, self.PREFIX + prefix):
                deleted += await self._client.unlink(*page)
        except Exception as exc:
            raise CacheUnavailable(str(exc) or type(exc).__name__) from None
        return deleted

    @property
    def client(self) -> Any:  # a redis.asyncio.Redis
        return self._client

    async def call(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Another operation on this Redis (the semantic index's: gateway/semantic_redis.py), under the same
        timeout and the same rest after an error."""
        self._check_awake()
        try:
            return await operation(self._client)
        except Exception as exc:
            raise self._rest(exc) from None

    def _check_awake(self) -> None:
        if time.monotonic() < self._resting_until:
            raise CacheUnavailable("the cache's Redis failed moments ago")

    def _rest(self, exc: Exception) -> CacheUnavailable:
        if time.monotonic() >= self._resting_until:  # logged once a rest, not once a request
            log.warning("response cache: Redis failed (%s); requests skip the cache for %.0f s",
                        exc or type(exc).__name__, RETRY_AFTER_S)
        self._resting_until = time.monotonic() + RETRY_AFTER_S
        return CacheUnavailable(str(exc) or type(exc).__name__)

    async def close(self) -> None:
        await self._client.aclose()


async def scan_pages(client: Any, prefix: str, size: int = 1000) -> AsyncIterator[list[bytes]]:
    """The keys starting with `prefix`, found by SCAN (never KEYS, which stops Redis), a page at a time."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    page: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=size):
        page.append(key)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page
