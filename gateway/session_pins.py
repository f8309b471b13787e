"""The session-pin control calls, whichever way a deployment is reached: an in-process engine
(LLMEngine's pin API through AsyncEngine) or a Pitstop engine server over HTTP (its
/v1/engine/sessions/... endpoints). Other backends (API providers, vLLM) hold no pins: None."""

from __future__ import annotations

import logging
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


def kv_view(backend: Backend) -> KVView | None:
    """An in-process engine's KV occupancy, read without a round trip (lengths are atomic reads)."""
    if not isinstance(backend, LocalEngineBackend):
        return None
    engine = backend.engine.engine
    blocks = engine.block_manager
    total = blocks.num_blocks
    return KVView(engine.config.block_size, total * engine.config.block_size,
                  (total - blocks.num_free_blocks) / total, len(blocks.pins.holders),
                  engine.config.num_host_blocks * engine.config.block_size)
