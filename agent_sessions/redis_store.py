"""Session state in Redis, shared by gateway replicas: one JSON string per session under
`pitstop:{prefix}:session:{<id>}`, expiring `idle_expiry_s` after its last write (Redis does the idle
expiry). Errors surface as StateUnavailableError (storage/redis_state.py): the gateway then serves
the turn without affinity rather than failing it."""

from __future__ import annotations

import math

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agent_sessions.state import SessionState
from storage.redis_state import StateUnavailableError


class RedisSessionStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "default", idle_expiry_s: float = 3600.0) -> None:
        self._client = client
        self.prefix = prefix
        self.idle_expiry_s = idle_expiry_s

    @classmethod
    def from_url(cls, url: str, prefix: str = "default", idle_expiry_s: float = 3600.0,
                 socket_timeout_s: float = 0.5) -> RedisSessionStore:
        # As for limits: an outage must cost a turn milliseconds, not retries with backoff.
        client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                         socket_connect_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 1))
        return cls(client, prefix, idle_expiry_s)

    def key(self, session_id: str) -> str:
        return f"pitstop:{self.prefix}:session:{{{session_id}}}"

    async def get(self, session_id: str) -> SessionState | None:
        try:
            raw = await self._client.get(self.key(session_id))
        except (RedisError, OSError) as exc:
            raise StateUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        return None if raw is None else SessionState.from_json(raw)

    async def put(self, state: SessionState) -> None:
        try:
            await self._client.set(self.key(state.session_id), state.to_json(),
                                   px=max(1, math.ceil(self.idle_expiry_s * 1000)))
        except (RedisError, OSError) as exc:
            raise StateUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def delete(self, session_id: str) -> None:
        try:
            await self._client.delete(self.key(session_id))
        except (RedisError, OSError) as exc:
            raise StateUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()
