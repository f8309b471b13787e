"""Session stores: in process (idle expiry, bounded) and in Redis over a real connection (shared by
replicas, idle expiry by Redis itself), and the state's JSON round trip."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent_sessions.redis_store import RedisSessionStore
from agent_sessions.state import SessionState, TurnRecord
from agent_sessions.store import MemorySessionStore
from storage.redis_state import StateUnavailableError
from tests.gateway.test_limits import REDIS_URL, delete_prefix, needs_redis, unique_prefix

pytestmark = pytest.mark.anyio


def state(session_id: str = "s1") -> SessionState:
    s = SessionState(session_id, program_start=1000.0, agent="swe", model="tiny", instance="tiny#0", turns=3,
                     returns=2, last_turn_end=1010.0, context_tokens=4096, pending_tools=["bash"])
    s.record(TurnRecord(3, "tiny#0", 4000, 3968, 0.5, 2.0))
    return s


def test_state_json_round_trip() -> None:
    s = state()
    assert SessionState.from_json(s.to_json()) == s


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_memory_store_expires_idle_sessions() -> None:
    clock = FakeClock()
    store = MemorySessionStore(idle_expiry_s=10.0, clock=clock)
    await store.put(state("a"))
    clock.t = 5.0
    await store.put(state("b"))
    got = await store.get("a")
    assert got == state("a") and got is not None
    clock.t = 12.0  # a: idle 12 s (reading does not refresh it), b: idle 7 s
    assert await store.get("a") is None and await store.get("b") is not None
    assert len(store) == 1


async def test_memory_store_is_bounded_and_returns_copies() -> None:
    store = MemorySessionStore(max_sessions=2)
    for name in "abc":
        await store.put(state(name))
    assert await store.get("a") is None and len(store) == 2
    got = await store.get("b")
    assert got is not None
    got.turns = 99
    assert (await store.get("b")).turns == 3  # type: ignore[union-attr]


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisSessionStore]:
    prefix = unique_prefix()
    store = RedisSessionStore.from_url(REDIS_URL, prefix=prefix, idle_expiry_s=0.5)
    yield store
    await store.close()
    await delete_prefix(prefix)


@needs_redis
async def test_redis_store_is_shared_between_replicas(redis_store: RedisSessionStore) -> None:
    other_replica = RedisSessionStore.from_url(REDIS_URL, prefix=redis_store.prefix, idle_expiry_s=0.5)
    try:
        await redis_store.put(state("shared"))
        assert await other_replica.get("shared") == state("shared")
        await other_replica.delete("shared")
        assert await redis_store.get("shared") is None
    finally:
        await other_replica.close()


@needs_redis
async def test_redis_store_expires_idle_sessions(redis_store: RedisSessionStore) -> None:
    await redis_store.put(state("idle"))
    assert await redis_store.get("idle") is not None
    await asyncio.sleep(0.7)
    assert await redis_store.get("idle") is None


async def test_redis_outage_is_state_unavailable() -> None:
    store = RedisSessionStore.from_url("redis://127.0.0.1:1/0", socket_timeout_s=0.2)
    try:
        with pytest.raises(StateUnavailableError):
            await store.get("x")
        with pytest.raises(StateUnavailableError):
            await store.put(state())
    finally:
        await store.close()
