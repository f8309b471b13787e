"""Redis going away: admission follows `fail_open`, nothing raises, and limits resume when it returns."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.limits import LimitsUnavailableError, RedisLimiter
from gateway.limits.base import Hold
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


@pytest.fixture(params=[False, True], ids=["fail_closed", "fail_open"])
async def limiter(request: pytest.FixtureRequest, server: ThrowawayRedis) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter.from_url(
        server.url, prefix="outage", fail_open=request.param, socket_timeout_s=0.2
    )
    yield limiter
    await limiter.close()


async def test_outage_follows_fail_open_and_recovers(
    limiter: RedisLimiter, server: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.limits.redis")
    assert (await limiter.admit("k", 2, 10.0)).allowed
    await limiter.record_spend("k", 0.25)

    server.kill()
    for _ in range(3):
        admission = await limiter.admit("k", 2, 10.0)
        assert admission.allowed is limiter.fail_open and admission.reason == "limits_unavailable"
    await limiter.record_spend("k", 0.5)  # kept in process, not raised
    with pytest.raises(LimitsUnavailableError):
        await limiter.spent("k")
    with pytest.raises(LimitsUnavailableError):
        await limiter.set_spent("k", 1.0)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # once per outage

    server.start()  # empty again: no persistence, and its script cache is gone
    first = await limiter.admit("k", 2, 10.0)
    assert first.allowed and first.reason is None
    assert await limiter.spent("k") == pytest.approx(0.5)  # the unwritten spend arrived
    assert (await limiter.admit("k", 2, 10.0)).allowed
    assert (await limiter.admit("k", 2, 10.0)).reason == "rate_limit"  # enforced again
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_hung_redis_does_not_hang_admission_or_spend(limiter: RedisLimiter, server: ThrowawayRedis) -> None:
    assert (await limiter.admit("k", 100, None)).allowed
    server.pause()  # accepts connections, answers nothing, until resumed below
    # Only the 0.2 s socket timeouts can end these calls while the server is paused. The outer limit is a
    # hang guard, far above their ~0.8 s, not a speed check.
    admission = await asyncio.wait_for(limiter.admit("k", 100, None), timeout=30)
    await asyncio.wait_for(limiter.record_spend("k", 0.1), timeout=30)
    assert admission.allowed is limiter.fail_open and admission.reason == "limits_unavailable"
    server.resume()
    assert (await limiter.admit("k", 100, None)).allowed
    # A timed-out write may still run once Redis wakes (two tries were sent) and the limiter writes the
    # amount again: spend can be overcounted, never lost.
    assert 0.1 - 1e-9 <= await limiter.spent("k") <= 0.3 + 1e-9


async def test_a_hold_settled_during_an_outage_keeps_its_spend(limiter: RedisLimiter, server: ThrowawayRedis) -> None:
    """A request that ends while Redis is away: its cost waits in process, and its hold is gone with the
    Redis that held it (or lapses on one that comes back with its data)."""
    assert (await limiter.admit("k", None, 1.0, hold=Hold("r1", 1.0))).allowed
    assert (await limiter.admit("k", None, 1.0, hold=Hold("r2", 0.2))).reason == "budget_held"
    server.kill()
    await limiter.settle("k", "r1", 0.3)  # kept, not raised
    server.start()
    admission = await limiter.admit("k", None, 1.0, hold=Hold("r2", 0.2))
    assert admission.allowed and await limiter.spent("k") == pytest.approx(0.3)
    await limiter.settle("k", "r2", 0.2)
    assert await limiter.spent("k") == pytest.approx(0.5)
