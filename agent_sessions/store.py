"""Where session state lives: in this process (the embedded default) or in Redis (shared by gateway
replicas, see redis_store.py). Idle sessions expire: `idle_expiry_s` after their last write."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from agent_sessions.state import SessionState


class SessionStore(Protocol):
    idle_expiry_s: float

    async def get(self, session_id: str) -> SessionState | None: ...

    async def put(self, state: SessionState) -> None: ...

    async def delete(self, session_id: str) -> None: ...

    async def close(self) -> None: ...


class MemorySessionStore:
    """An LRU of states by last write; expired entries are dropped on access and from the old end."""

    def __init__(self, idle_expiry_s: float = 3600.0, max_sessions: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_expiry_s = idle_expiry_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._states: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (written, json)

    def __len__(self) -> int:
        return len(self._states)

    def _expire(self, now: float) -> None:
        while self._states:
            written, _ = next(iter(self._states.values()))
            if now - written < self.idle_expiry_s and len(self._states) <= self.max_sessions:
                break
            self._states.popitem(last=False)

    async def get(self, session_id: str) -> SessionState | None:
        now = self.clock()
        self._expire(now)
        entry = self._states.get(session_id)
        if entry is None or now - entry[0] >= self.idle_expiry_s:
            return None
        # Stored as JSON, as Redis does: callers never share a mutable state object.
        return SessionState.from_json(entry[1])

    async def put(self, state: SessionState) -> None:
        now = self.clock()
        self._states.pop(state.session_id, None)
        self._states[state.session_id] = (now, state.to_json())
        self._expire(now)

    async def delete(self, session_id: str) -> None:
        self._states.pop(session_id, None)

    async def close(self) -> None:
        self._states.clear()
