"""Key change events over Redis pub/sub (gateway/key_events.py): heard by every subscriber, and heard
again after Redis went away and came back; publishing while it is away does not raise."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import pytest

from gateway.key_events import KeyEvents
from tests.throwaway_redis import ThrowawayRedis

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[ThrowawayRedis]:
    throwaway = ThrowawayRedis()
    throwaway.start()
    yield throwaway
    throwaway.kill()


async def _heard(heard: list[str], count: int) -> None:
    for _ in range(200):
        if len(heard) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"heard {heard}, waited for {count}")


async def test_changes_reach_every_replica_and_survive_an_outage(server: ThrowawayRedis) -> None:
    heard_a: list[str] = []
    heard_b: list[str] = []
    a, b = KeyEvents(server.url, heard_a.append), KeyEvents(server.url, heard_b.append)
    for events in (a, b):
        await events.start()
    try:
        await asyncio.wait_for(asyncio.gather(a.subscribed.wait(), b.subscribed.wait()), 10)
        await a.publish("key-1")
        await asyncio.gather(_heard(heard_a, 1), _heard(heard_b, 1))
        assert heard_a == heard_b == ["key-1"]

        server.kill()
        await a.publish("lost")  # logged, not raised
        for _ in range(250):  # both listeners notice the connection is gone
            if not a.subscribed.is_set() and not b.subscribed.is_set():
                break
            await asyncio.sleep(0.02)
        assert not a.subscribed.is_set() and not b.subscribed.is_set()
        server.start()
        await asyncio.wait_for(asyncio.gather(a.subscribed.wait(), b.subscribed.wait()), 10)
        await asyncio.sleep(0.1)
        await b.publish("key-2")
        await asyncio.gather(_heard(heard_a, 2), _heard(heard_b, 2))
        assert heard_a[-1] == heard_b[-1] == "key-2"
    finally:
        await a.close()
        await b.close()
