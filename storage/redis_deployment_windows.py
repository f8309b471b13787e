"""Redis-backed per-deployment rate windows shared by gateway replicas (gateway/deployment_limits_sync.py):
the atomic operation, no policy.

Each deployment has one hash of every replica's counts and one per replica, hash-tagged on the
deployment's id so they land in one cluster slot:
- `pitstop:{prefix}:deployment_limits:{<id>}`: fields `<second>:r` and `<second>:t`, the requests started
  and their tokens in that wall-clock second, summed over the replicas;
- `pitstop:{prefix}:deployment_limits:{<id>}:replica:<replica>`: the same fields, this replica's alone.
Both expire two windows after their last write, and a sync drops the seconds that left the window.

A sync writes a replica's whole window (its counts of each second, not increments), so it is
idempotent: a sync sent twice (a retry after a timeout) counts once, and a Redis that restarted empty
has every replica's window back after each one's next sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from storage.redis_state import StateUnavailableError

# This replica's old counts leave the sum and its new ones join it (only the seconds still in the window),
# its own hash is replaced, the seconds out of the window leave the sum, and what is left less this
# replica's is the answer: the other replicas' counts, by field.
_SYNC_LUA = """
local oldest = tonumber(ARGV[1])
local function second_of(field) return tonumber(string.match(field, '^(-?%d+):')) end
local change = {}
local before = redis.call('HGETALL', KEYS[2])
for i = 1, #before, 2 do
  if second_of(before[i]) >= oldest then change[before[i]] = -tonumber(before[i + 1]) end
end
local mine = {}
local flat = {}
for i = 3, #ARGV, 3 do
  if tonumber(ARGV[i]) >= oldest then
    local counts = {r = tonumber(ARGV[i + 1]), t = tonumber(ARGV[i + 2])}
    for kind, value in pairs(counts) do
      local field = ARGV[i] .. ':' .. kind
      mine[field] = value
      change[field] = (change[field] or 0) + value
      if value ~= 0 then
        flat[#flat + 1] = field
        flat[#flat + 1] = value
      end
    end
  end
end
for field, by in pairs(change) do
  if by ~= 0 then redis.call('HINCRBY', KEYS[1], field, by) end
end
redis.call('DEL', KEYS[2])
if #flat > 0 then
  redis.call('HSET', KEYS[2], unpack(flat))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local others = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field = all[i]
  if second_of(field) < oldest then
    redis.call('HDEL', KEYS[1], field)
  else
    local other = tonumber(all[i + 1]) - (mine[field] or 0)
    if other ~= 0 then
      others[#others + 1] = field
      others[#others + 1] = other
    end
  end
end
if #all > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return others
"""

Seconds = Sequence[tuple[int, int, int]]  # (wall-clock second, requests, tokens)


@dataclass(frozen=True, slots=True)
class WindowSync:
    """One deployment's part of a sync: its id, the first second in its window, this replica's counts."""

    shared_id: str
    oldest: int
    seconds: Seconds


class RedisDeploymentWindows:
    def __init__(self, client: aioredis.Redis, prefix: str, replica: str) -> None:
        self._client = client
        self._prefix = prefix
        self.replica = replica
        self._script = client.register_script(_SYNC_LUA)  # for its sha and a load after NOSCRIPT

    @classmethod
    def from_url(cls, url: str, prefix: str, replica: str, *,
                 socket_timeout_s: float = 0.5) -> RedisDeploymentWindows:
        # As storage/redis_state.py: short timeouts, one immediate retry (a stale pooled connection after a
        # restart); a sync is idempotent, so a retry that runs twice counts once.
        client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                         socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 1))
        return cls(client, prefix, replica)

    def keys(self, shared_id: str) -> list[str]:
        base = f"pitstop:{self._prefix}:deployment_limits:{{{shared_id}}}"
        return [base, f"{base}:replica:{self.replica}"]

    async def sync(self, windows: Sequence[WindowSync], ttl_s: float) -> list[dict[int, tuple[int, int]]]:
        """Write each deployment's counts of this replica and read the other replicas', by second
        ({second: (requests, tokens)}), in one pipelined round trip."""
        try:
            replies = await self._pipelined(windows, ttl_s)
            if any(isinstance(reply, NoScriptError) for reply in replies):  # a restarted Redis: load, send again
                self._script.sha = await self._client.script_load(_SYNC_LUA)
                replies = await self._pipelined(windows, ttl_s)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except (RedisError, OSError) as exc:
            raise StateUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        return [_by_second(reply) for reply in replies]

    async def _pipelined(self, windows: Sequence[WindowSync], ttl_s: float) -> list:
        # EVALSHA queued directly: redis-py's Script in a pipeline asks SCRIPT EXISTS first, a second round trip.
        async with self._client.pipeline(transaction=False) as pipe:
            for window in windows:
                args = [window.oldest, round(ttl_s * 1000)]
                for second, requests, tokens in window.seconds:
                    args += [second, requests, tokens]
                pipe.evalsha(self._script.sha, 2, *self.keys(window.shared_id), *args)
            return await pipe.execute(raise_on_error=False)

    async def close(self) -> None:
        await self._client.aclose()


def _by_second(reply: list) -> dict[int, tuple[int, int]]:
    counts: dict[int, list[int]] = {}
    for field, value in zip(reply[::2], reply[1::2], strict=True):
        second, kind = (field.decode() if isinstance(field, bytes) else field).split(":")
        counts.setdefault(int(second), [0, 0])[kind == "t"] += int(value)
    return {second: (requests, tokens) for second, (requests, tokens) in counts.items()}
