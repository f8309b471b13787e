"""The semantic cache's index on Redis, shared by every replica (Redis 7 as it is: no RediSearch, no
vector sets, so vectors are compared in the gateway).

A bucket is a list of entries (`pitstop:semantic:{<bucket>}:e`: expiry, exact cache key, fingerprint and
the vector as float16 bytes, about 0.9 KB at 384 dimensions), appended to and trimmed to its newest
`max_entries`, beside a write counter (`...:n`, starting at a random number so a bucket flushed and
written again never looks unchanged). Each replica keeps a copy of the buckets it looked up
(gateway/semantic_index.py) and a lookup asks, in one script call, for only the entries written since
its copy's counter: a lookup that finds nothing new moves a few bytes, not the bucket. Both keys expire
with the longest-lived answer written to them; an entry whose answer is gone is skipped."""

from __future__ import annotations

import random
import struct
import time
from typing import Any

import numpy as np

from gateway.cache_stores import CacheUnavailable, RedisCacheStore, scan_pages
from gateway.semantic_index import LocalSemanticIndex, Search
from gateway.semantic_text import FINGERPRINT_BYTES

PREFIX = "pitstop:semantic:"
_HEAD = struct.Struct("<dH")  # expires (wall clock), the key's length

# KEYS: entries, counter. ARGV: the counter the copy was read at (-1: none). Returns the counter, the
# list's length, 1 where the whole list follows (else only the entries written since), then entries.
_READ = """
local n = tonumber(redis.call('GET', KEYS[2]) or '-1')
local seen = tonumber(ARGV[1])
local len = redis.call('LLEN', KEYS[1])
if n == seen then return {n, len, 0} end
local fresh = n - seen
local out, entries
if seen < 0 or fresh <= 0 or fresh > len then
  out, entries = {n, len, 1}, redis.call('LRANGE', KEYS[1], 0, -1)
else
  out, entries = {n, len, 0}, redis.call('LRANGE', KEYS[1], -fresh, -1)
end
for _, entry in ipairs(entries) do out[#out + 1] = entry end
return out
"""
# KEYS: entries, counter. ARGV: the entry, max entries, ttl ms, the counter's random start.
_WRITE = """
redis.call('SET', KEYS[2], ARGV[4], 'NX')
local n = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
local ttl = tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return n
"""


def encode_entry(key: str, vector: np.ndarray, print_: bytes, expires: float) -> bytes:
    raw = key.encode()
    return _HEAD.pack(expires, len(raw)) + raw + print_ + vector.astype("<f2").tobytes()


def decode_entry(blob: bytes) -> tuple[str, np.ndarray, bytes, float]:
    expires, size = _HEAD.unpack_from(blob)
    at = _HEAD.size + size
    key = blob[_HEAD.size:at].decode()
    print_ = blob[at:at + FINGERPRINT_BYTES]
    vector = np.frombuffer(blob, dtype="<f2", offset=at + FINGERPRINT_BYTES).astype(np.float32)
    return key, vector, print_, expires


def _keys(name: str) -> list[str]:
    return [f"{PREFIX}{{{name}}}:e", f"{PREFIX}{{{name}}}:n"]  # one hash slot, for a Redis Cluster


class RedisSemanticIndex:
    def __init__(self, store: RedisCacheStore, max_entries: int, max_total: int) -> None:
        self.store = store
        self.max_entries = max_entries
        self.copies = LocalSemanticIndex(max_entries, max_total)  # the buckets as last read
        self._read = store.client.register_script(_READ)
        self._write = store.client.register_script(_WRITE)

    async def search(self, name: str, vector: np.ndarray, print_: bytes, threshold: float) -> Search:
        """Raises CacheUnavailable where Redis is away (or resting after an error)."""
        copy = self.copies.bucket(name, len(vector))
        seen = copy.seen
        reply: list[Any] = await self.store.call(lambda client: self._read(keys=_keys(name), args=[seen], client=client))
        counter, length, whole, entries = int(reply[0]), int(reply[1]), int(reply[2]), reply[3:]
        if whole:
            copy.keep([])
        for blob in entries:
            key, row, entry_print, expires = decode_entry(blob)
            if len(row) == copy.dim:
                copy.append(key, row, entry_print, expires)
        copy.keep(list(range(max(0, len(copy) - length), len(copy))))  # what the list still holds
        copy.seen = counter
        self.copies.trim()
        return copy.search(vector, print_, threshold)

    async def add(self, name: str, key: str, vector: np.ndarray, print_: bytes, ttl_s: float) -> None:
        """Written to Redis only: this replica's copy takes it at its next lookup, as any replica's."""
        entry = encode_entry(key, vector, print_, time.time() + ttl_s)
        start = random.getrandbits(40)
        await self.store.call(lambda client: self._write(
            keys=_keys(name), args=[entry, self.max_entries, max(1, round(ttl_s * 1000)), start], client=client))

    def served(self, name: str, key: str) -> None:
        pass  # Redis trims the oldest written, not the least served

    async def forget(self, name: str, keys: list[str]) -> None:
        await self.copies.forget(name, keys)  # Redis's list drops them as it is trimmed, or expires

    async def delete_prefix(self, prefix: str) -> int:
        """Every bucket whose name starts with `prefix`: its entries counted, then unlinked. Raises
        CacheUnavailable, as a flush cannot be skipped."""
        await self.copies.delete_prefix(prefix)
        client, deleted = self.store.client, 0
        try:
            async for page in scan_pages(client, f"{PREFIX}{{{prefix}"):
                async with client.pipeline(transaction=False) as pipe:
                    for key in page:
                        if key.endswith(b":e"):
                            pipe.llen(key)
                    deleted += sum(await pipe.execute())
                await client.unlink(*page)
        except Exception as exc:
            raise CacheUnavailable(str(exc) or type(exc).__name__) from None
        return deleted

    async def close(self) -> None:
        await self.copies.close()
