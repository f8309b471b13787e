"""Key changes told to every gateway replica through Redis pub/sub: a key revoked or changed over HTTP
(gateway/key_admin.py) on one replica is dropped from every replica's key cache at once, not when their
cache entries expire (gateway/auth.py, 10 s). A team's change is told as "team:<id>" (gateway/team_admin.py):
every replica forgets the cached lookups of that team's keys. A lost message (Redis away) costs only
that wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("pitstop.gateway")

RETRY_S = 1.0


class KeyEvents:
    def __init__(self, url: str, on_change: Callable[[str], None], prefix: str = "default") -> None:
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=None)
        self._channel = f"pitstop:{prefix}:key-changes"
        self._on_change = on_change
        self._listener: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set while the listener is subscribed (tests wait on it)

    async def publish(self, subject: str) -> None:
        """Tell the other replicas that a key (its id) or a team ("team:<id>") changed; never raises (their
        caches expire on their own)."""
        try:
            await asyncio.wait_for(self._client.publish(self._channel, subject), 1.0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not tell other replicas that %s changed (%s); they see it within 10 s",
                        subject if subject.startswith("team:") else f"key {subject}", exc)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        self._on_change(message["data"].decode())
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("key change events: %s; resubscribing in %.0f s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()
