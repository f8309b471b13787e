"""The session-pin control calls, whichever way a deployment is reached: an in-process engine
(LLMEngine's pin API through AsyncEngine) or a Pitstop engine server over HTTP (its
/v1/engine/sessions/... endpoints). Other backends (API providers, vLLM) hold no pins: None."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from engine.async_engine import SessionNotFoundError
from gateway.backends.base import Backend
from gateway.backends.local import LocalEngineBackend
from gateway.backends.openai_http import OpenAIHTTPBackend

log = logging.getLogger("pitstop.sessions")
_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


@dataclass(frozen=True)
class KVView:
    block_size: int
    capacity_tokens: int
    used_fraction: float  # blocks held by running requests and pins
    pinned_blocks: int
    host_capacity_tokens: int = 0  # its host KV tier (engine/host_cache.py); 0: none
    disk_capacity_tokens: int = 0  # its disk KV tier (engine/disk_cache.py); 0: none
    kv_groups: int = 1  # a model mixing sliding and full layers: a block of each group per block_size tokens

    @property
    def pinned_tokens(self) -> int:
        """The pinned blocks as tokens of `capacity_tokens` (which counts a block of each group per token run)."""
        return self.pinned_blocks * self.block_size // self.kv_groups


def holds_pins(backend: Backend) -> bool:
    return isinstance(backend, LocalEngineBackend) or (
        isinstance(backend, OpenAIHTTPBackend) and backend.accepts_session)


def _control_url(backend: OpenAIHTTPBackend, session_id: str, action: str = "") -> str:
    base = backend.api_base.removesuffix("/v1")
    return f"{base}/v1/engine/sessions/{session_id}{action}"


async def set_ttl(backend: Backend, session_id: str, ttl_s: float) -> dict | None:
    """Give the session's pin `ttl_s` from now (0 releases it); re-pins what is still cached when the
    provisional pin is gone. Returns the engine's session info afterwards (None: no pins here)."""
    if isinstance(backend, LocalEngineBackend):
        engine = backend.engine
        if not engine.is_healthy:
            return None
        if ttl_s <= 0:
            await engine.unpin_session(session_id)
        elif not await engine.extend_session_pin(session_id, ttl_s):
            try:
                await engine.pin_session(session_id, ttl_s)
            except SessionNotFoundError:
                return None
        return await engine.session_info(session_id)
    if isinstance(backend, OpenAIHTTPBackend) and backend.accepts_session:
        try:
            session = backend.session
            if ttl_s <= 0:
                async with session.delete(_control_url(backend, session_id, "/pin"), timeout=_TIMEOUT):
                    pass
            else:
                async with session.post(_control_url(backend, session_id, "/extend"), json={"ttl_s": ttl_s},
                                        timeout=_TIMEOUT) as response:
                    extended = response.status == 200
                if not extended:
                    async with session.post(_control_url(backend, session_id, "/pin"), json={"ttl_s": ttl_s},
                                            timeout=_TIMEOUT):
                        pass
            return await session_info(backend, session_id)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("pin control on %s failed for %s: %r", backend.api_base, session_id, exc)
    return None


async def session_info(backend: Backend, session_id: str) -> dict | None:
    if isinstance(backend, LocalEngineBackend):
        return await backend.engine.session_info(session_id) if backend.engine.is_healthy else None
    if isinstance(backend, OpenAIHTTPBackend) and backend.accepts_session:
        try:
            async with backend.session.get(_control_url(backend, session_id), timeout=_TIMEOUT) as response:
                return await response.json() if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
    return None


def view_from_stats(stats: dict) -> KVView:
    """A KVView from an engine server's /v1/engine/stats (EngineStats as JSON)."""
    blocks, block_size = stats["blocks"], int(stats["block_size"])
    total = max(1, int(blocks["total"]))
    host, disk = blocks.get("host") or {}, blocks.get("disk") or {}
    groups = max(1, int(blocks.get("kv_groups", 1)))  # a model mixing sliding and full layers: a block a group
    return KVView(block_size, total * block_size // groups, int(blocks["used"]) / total, int(blocks["pinned"]),
                  int(host.get("total", 0)) * block_size, int(disk.get("total", 0)) * block_size, groups)


class KVViews:
    """Each deployment's KV occupancy for the TTL choice: an in-process engine's read directly, a Pitstop
    engine server's from its /v1/engine/stats, kept `max_age_s` and then refreshed in the background
    (the first read of a server waits for it, at most `timeout_s`); None elsewhere, or while a server
    has not answered."""

    def __init__(self, max_age_s: float = 1.0, timeout_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._remote: dict[OpenAIHTTPBackend, tuple[float, KVView | None]] = {}
        self._refreshing: dict[OpenAIHTTPBackend, asyncio.Task[None]] = {}

    async def get(self, backend: Backend) -> KVView | None:
        if not (isinstance(backend, OpenAIHTTPBackend) and backend.accepts_session):
            return kv_view(backend)
        cached = self._remote.get(backend)
        if cached is None:
            await self._refresh(backend)
            return self._remote[backend][1]
        return self.known(backend)

    def known(self, backend: Backend) -> KVView | None:
        """What is known now, without waiting: an in-process engine's view, or a server's last one (None
        before its first answer); a missing or stale one is fetched in the background for next time."""
        if not (isinstance(backend, OpenAIHTTPBackend) and backend.accepts_session):
            return kv_view(backend)
        cached = self._remote.get(backend)
        stale = cached is None or self.clock() - cached[0] > self.max_age_s
        if stale and backend not in self._refreshing:
            task = asyncio.create_task(self._refresh(backend))
            self._refreshing[backend] = task
            task.add_done_callback(lambda _: self._refreshing.pop(backend, None))
        return cached[1] if cached is not None else None

    async def _refresh(self, backend: OpenAIHTTPBackend) -> None:
        view = self._remote.get(backend, (0.0, None))[1]  # a failed read keeps the last one
        try:
            url = backend.api_base.removesuffix("/v1") + "/v1/engine/stats"
            async with backend.session.get(url, timeout=self._timeout) as response:
                if response.status == 200:
                    view = view_from_stats(await response.json())
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            log.debug("engine stats from %s failed: %r", backend.api_base, exc)
        self._remote[backend] = (self.clock(), view)

    async def close(self) -> None:
        for task in list(self._refreshing.values()):
            task.cancel()


def kv_view(backend: Backend) -> KVView | None:
    """An in-process engine's KV occupancy, read without a round trip (lengths are atomic reads)."""
    if not isinstance(backend, LocalEngineBackend):
        return None
    engine = backend.engine.engine
    blocks = engine.block_manager
    total, block_size, groups = blocks.num_blocks, engine.config.block_size, len(blocks.group_slides)
    return KVView(block_size, total * block_size // groups, (total - blocks.num_free_blocks) / total, len(blocks.pins.holders),
                  engine.config.num_host_blocks * block_size, engine.config.num_disk_blocks * block_size, groups)
