"""Redis-backed shared state for per-key limits: the atomic operations, no policy.

Each key id has six Redis keys, hash-tagged on the key id so all land in one cluster slot:
- `pitstop:{prefix}:limits:{<key_id>}:window`: sorted set of admissions (score: server time in µs),
  expiring one window after the last admission;
- `pitstop:{prefix}:limits:{<key_id>}:spent`: integer nano-USD spent, no expiry;
- `...:tokens` and `...:tokens_sum`: for the TPM limit, a sorted set of finished requests' tokens (member
  `<unique>:<tokens>`, score: when it ended, server µs) and their running sum, expiring one window after
  the last;
- `...:holds` (hash: hold id -> nano-USD) and `...:hold_lapses` (sorted set: hold id -> when it lapses,
  server µs): what requests in flight hold of the budget, expiring with the last hold's lapse.
A budget with a period (gateway/limits/periods.py) has its own spent and holds keys per period,
`...:spent@<period start>` and so on, the spent one expiring 40 days after its last write.

Errors from Redis (connection refused, timeout, loading, ...) surface as `StateUnavailableError`, so
callers apply their own outage policy without importing redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Budget first (its rejection takes no slot): lapsed holds go, then spent and spent + held against the
# budget; then the tokens of the requests that ended in the window against the TPM limit; then the
# sliding window: prune, count, take a slot; then the request's hold, if it has one.
# Time comes from the server (TIME) so replica clocks do not matter; ARGV[5] overrides it for tests.
_ADMIT_LUA = """
local rpm = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local now
if ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local spent = tonumber(redis.call('GET', KEYS[2]) or '0')
local held = 0
if budget >= 0 then
  for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
    redis.call('HDEL', KEYS[3], lapsed)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, amount in ipairs(redis.call('HVALS', KEYS[3])) do
    held = held + tonumber(amount)
  end
end
local count = 0
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  count = redis.call('ZCARD', KEYS[1])
end
local tpm = tonumber(ARGV[9])
local used = 0
if tpm >= 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - window)
  if #gone > 0 then
    local freed = 0
    for _, member in ipairs(gone) do
      freed = freed + tonumber(string.match(member, ':(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window)
    redis.call('DECRBY', KEYS[6], freed)
  end
  if redis.call('ZCARD', KEYS[5]) == 0 then
    redis.call('DEL', KEYS[6])
  end
  used = tonumber(redis.call('GET', KEYS[6]) or '0')
end
if budget >= 0 and spent >= budget then
  return {1, count, 0, spent, held, used}
end
if budget >= 0 and spent + held >= budget then
  return {3, count, 0, spent, held, used}
end
if tpm >= 0 and used >= tpm then
  local oldest = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  local retry = window
  if oldest[2] then retry = tonumber(oldest[2]) + window - now end
  return {4, count, retry, spent, held, used}
end
if rpm >= 0 then
  if count >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local retry = window
    if oldest[2] then retry = tonumber(oldest[2]) + window - now end
    return {2, count, retry, spent, held, used}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  count = count + 1
end
if budget >= 0 and ARGV[6] ~= '' then
  local ttl = tonumber(ARGV[8])
  redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[6])
  local last = tonumber(redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIRE', KEYS[3], math.ceil((last - now) / 1000))
  redis.call('PEXPIRE', KEYS[4], math.ceil((last - now) / 1000))
end
return {0, count, 0, spent, held, used}
"""

# A finished request's tokens, in its key's token window (member "<unique>:<tokens>", scored by when it
# ended) and its running sum (admission takes what aged out off it: each entry once, so an admission
# costs the same however busy the key); both expire one window after the last.
_TOKENS_LUA = """
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local ttl = math.ceil(tonumber(ARGV[3]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

# A request's end: its hold goes and its cost is added, in one step (a period's total expires).
_SETTLE_LUA = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local spent = redis.call('INCRBY', KEYS[3], ARGV[2])
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
return spent
"""

# An admission undone (its request went no further): its window entry and its hold go, in one step.
_RELEASE_LUA = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
if ARGV[2] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return 1
"""

Outcome = Literal["admitted", "over_budget", "over_rate", "over_held", "over_tokens"]
_OUTCOMES: tuple[Outcome, ...] = ("admitted", "over_budget", "over_rate", "over_held", "over_tokens")
_NO_LIMIT = -1


# How long a budget period's spent total is kept after its last write: past the longest period, a month.
PERIOD_SPEND_TTL_S = 40 * 86_400


def _suffix(period: int | None) -> str:
    return "" if period is None else f"@{period}"


def _ttl_ms(period: int | None) -> int | str:
    """How long a period's spent total is kept (milliseconds); '' for a lifetime total (kept)."""
    return "" if period is None else PERIOD_SPEND_TTL_S * 1000


class StateUnavailableError(Exception):
    """Redis could not be reached or failed to answer."""


@dataclass(frozen=True, slots=True)
class WindowCheck:
    outcome: Outcome
    requests_in_window: int  # including this request when admitted
    retry_after_s: float  # meaningful for "over_rate" and "over_tokens" only
    spent_nanousd: int
    held_nanousd: int = 0  # held by requests in flight (not counting this one's)
    tokens_in_window: int = 0  # the tokens of the key's requests that ended in the window


@asynccontextmanager
async def _unavailable_on_error() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StateUnavailableError(f"{type(exc).__name__}: {exc}") from exc


class RedisLimitState:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        # EVALSHA with a reload on NOSCRIPT, so a restarted (emptied) Redis is handled transparently.
        self._admit_script = client.register_script(_ADMIT_LUA)
        self._settle_script = client.register_script(_SETTLE_LUA)
        self._tokens_script = client.register_script(_TOKENS_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str, *, socket_timeout_s: float = 0.5) -> RedisLimitState:
        # Short timeouts and a single immediate retry (which reconnects a stale pooled connection after
        # a Redis restart): an outage must cost the request path milliseconds, not redis-py's default
        # ten retries with backoff.
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, prefix)

    def window_key(self, key_id: str) -> str:
        return f"pitstop:{self._prefix}:limits:{{{key_id}}}:window"

    def tokens_keys(self, key_id: str) -> list[str]:
        base = f"pitstop:{self._prefix}:limits:{{{key_id}}}"
        return [f"{base}:tokens", f"{base}:tokens_sum"]

    def spent_key(self, key_id: str, period: int | None = None) -> str:
        return f"pitstop:{self._prefix}:limits:{{{key_id}}}:spent{_suffix(period)}"

    def holds_keys(self, key_id: str, period: int | None = None) -> list[str]:
        base = f"pitstop:{self._prefix}:limits:{{{key_id}}}"
        return [f"{base}:holds{_suffix(period)}", f"{base}:hold_lapses{_suffix(period)}"]

    async def check_and_take(
        self,
        key_id: str,
        rpm_limit: int | None,
        budget_nanousd: int | None,
        window_s: float,
        member: str,
        now_s: float | None = None,
        hold: tuple[str, int, float] | None = None,
        period: int | None = None,
        tpm_limit: int | None = None,
    ) -> WindowCheck:
        """Atomically check the budget (spent, then spent + held), the tokens and the window and, when all
        allow, record `member` in the window and `hold` (id, nano-USD, seconds until it lapses) in the holds."""
        window_us = round(window_s * 1_000_000)
        hold_id, hold_nanousd, hold_ttl_s = hold if hold is not None else ("", 0, 0.0)
        args = [
            _NO_LIMIT if rpm_limit is None else rpm_limit,
            _NO_LIMIT if budget_nanousd is None else budget_nanousd,
            window_us,
            member,
            "" if now_s is None else round(now_s * 1_000_000),
            hold_id,
            hold_nanousd,
            round(hold_ttl_s * 1_000_000),
            _NO_LIMIT if tpm_limit is None else tpm_limit,
        ]
        async with _unavailable_on_error():
            code, count, retry_us, spent, held, used = await self._admit_script(
                keys=[self.window_key(key_id), self.spent_key(key_id, period), *self.holds_keys(key_id, period),
                      *self.tokens_keys(key_id)],
                args=args
            )
        return WindowCheck(_OUTCOMES[int(code)], int(count), int(retry_us) / 1_000_000, int(spent), int(held),
                           int(used))

    async def record_tokens(self, key_id: str, tokens: int, window_s: float, member: str,
                            now_s: float | None = None) -> None:
        """Add a finished request's `tokens` to the key's token window (`member`: unique to the request)."""
        async with _unavailable_on_error():
            await self._tokens_script(keys=self.tokens_keys(key_id),
                                      args=[member, tokens, round(window_s * 1_000_000),
                                            "" if now_s is None else round(now_s * 1_000_000)])

    async def settle(self, key_id: str, hold_id: str, nanousd: int, period: int | None = None) -> int:
        """Release the hold and add `nanousd` spent, atomically; the new spent total."""
        async with _unavailable_on_error():
            return int(await self._settle_script(
                keys=[*self.holds_keys(key_id, period), self.spent_key(key_id, period)],
                args=[hold_id, nanousd, _ttl_ms(period)]))

    async def release(self, key_id: str, member: str | None, hold_id: str | None, period: int | None = None) -> None:
        """Take `member` out of the key's window and the hold `hold_id` out of its holds, atomically."""
        async with _unavailable_on_error():
            await self._release_script(keys=[self.window_key(key_id), *self.holds_keys(key_id, period)],
                                       args=[member or "", hold_id or ""])

    async def add_spend(self, key_id: str, nanousd: int, period: int | None = None) -> int:
        async with _unavailable_on_error():
            if period is None:
                return int(await self._client.incrby(self.spent_key(key_id), nanousd))
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(self.spent_key(key_id, period), nanousd)
                pipe.pexpire(self.spent_key(key_id, period), _ttl_ms(period))
                spent, _ = await pipe.execute()
            return int(spent)

    async def get_spent(self, key_id: str, period: int | None = None) -> int:
        async with _unavailable_on_error():
            value = await self._client.get(self.spent_key(key_id, period))
        return int(value) if value is not None else 0

    async def set_spent(self, key_id: str, nanousd: int, period: int | None = None) -> None:
        async with _unavailable_on_error():
            await self._client.set(self.spent_key(key_id, period), nanousd,
                                   px=None if period is None else int(_ttl_ms(period)))

    async def close(self) -> None:
        await self._client.aclose()
