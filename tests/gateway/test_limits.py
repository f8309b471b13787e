"""Contract tests: the in-process and the Redis limiter must behave the same."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from gateway.limits import Limiter, MemoryLimiter, RedisLimiter, make_limiter
from gateway.limits.base import Hold

REDIS_URL = os.environ.get("PITSTOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

pytestmark = pytest.mark.anyio


def redis_available(url: str = REDIS_URL) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def unique_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"pitstop:{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


needs_redis = pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_URL}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        memory = MemoryLimiter(window_s=60.0)
        yield memory
        await memory.close()
        return
    prefix = unique_prefix()
    shared = RedisLimiter.from_url(REDIS_URL, prefix=prefix, window_s=60.0)
    yield shared
    await shared.close()
    await delete_prefix(prefix)


async def test_unlimited_key_is_always_admitted(limiter: Limiter) -> None:
    for i in range(50):
        admission = await limiter.admit("k", None, None, now=1000.0 + i)
        assert admission.allowed and admission.reason is None
        assert admission.remaining_requests is None and admission.remaining_budget_usd is None


async def test_rpm_admits_exactly_the_limit_then_rejects(limiter: Limiter) -> None:
    remaining = [(await limiter.admit("k", 3, None, now=1000.0 + i)).remaining_requests for i in range(3)]
    assert remaining == [2, 1, 0]
    rejected = await limiter.admit("k", 3, None, now=1030.0)
    assert not rejected.allowed and rejected.reason == "rate_limit"
    assert rejected.retry_after_s == pytest.approx(30.0)  # the oldest admission (t=1000) leaves at 1060
    assert rejected.remaining_requests == 0


async def test_window_edge_is_exact(limiter: Limiter) -> None:
    for t in (1000.0, 1010.0, 1020.0):
        assert (await limiter.admit("k", 3, None, now=t)).allowed
    just_before = await limiter.admit("k", 3, None, now=1059.999)
    assert not just_before.allowed and just_before.retry_after_s == pytest.approx(0.001, abs=1e-6)
    assert (await limiter.admit("k", 3, None, now=1060.0)).allowed  # t=1000 is exactly one window old
    assert not (await limiter.admit("k", 3, None, now=1060.0)).allowed
    assert not (await limiter.admit("k", 3, None, now=1069.999)).allowed
    assert (await limiter.admit("k", 3, None, now=1070.0)).allowed


async def test_rejected_requests_take_no_slot(limiter: Limiter) -> None:
    assert (await limiter.admit("k", 2, None, now=1000.0)).allowed
    assert (await limiter.admit("k", 2, None, now=1001.0)).allowed
    for t in range(1002, 1060):
        assert not (await limiter.admit("k", 2, None, now=float(t))).allowed
    assert (await limiter.admit("k", 2, None, now=1060.0)).allowed
    assert (await limiter.admit("k", 2, None, now=1061.0)).allowed


async def test_concurrent_admissions_are_exact(limiter: Limiter) -> None:
    admissions = await asyncio.gather(*(limiter.admit("k", 10, None, now=1000.0) for _ in range(100)))
    assert sum(a.allowed for a in admissions) == 10
    assert {a.reason for a in admissions if not a.allowed} == {"rate_limit"}


async def test_zero_rpm_rejects_everything(limiter: Limiter) -> None:
    admission = await limiter.admit("k", 0, None, now=1000.0)
    assert not admission.allowed and admission.reason == "rate_limit"
    assert admission.retry_after_s == pytest.approx(60.0)


async def test_budget_stops_admission_once_spend_reaches_it(limiter: Limiter) -> None:
    # 10 x $0.10 must reach $1.00 exactly; a float sum lands at 0.9999999999999999 and admits an 11th.
    for i in range(10):
        admission = await limiter.admit("k", None, 1.0, now=1000.0 + i)
        assert admission.allowed
        assert admission.remaining_budget_usd == pytest.approx(1.0 - 0.1 * i)
        await limiter.record_spend("k", 0.1)
    assert await limiter.spent("k") == pytest.approx(1.0)
    refused = await limiter.admit("k", None, 1.0, now=1100.0)
    assert not refused.allowed and refused.reason == "budget"
    assert refused.retry_after_s is None and refused.remaining_budget_usd == 0.0
    assert (await limiter.admit("k", None, 1.5, now=1100.0)).allowed  # a raised budget admits again


async def test_overshoot_is_bounded_by_requests_in_flight(limiter: Limiter) -> None:
    in_flight = [await limiter.admit("k", None, 1.0, now=1000.0) for _ in range(3)]
    assert all(a.allowed for a in in_flight)  # nothing spent yet: all three start
    for _ in in_flight:
        await limiter.record_spend("k", 0.5)
    assert await limiter.spent("k") == pytest.approx(1.5)
    assert not (await limiter.admit("k", None, 1.0, now=1001.0)).allowed


async def test_budget_rejection_takes_no_rate_slot(limiter: Limiter) -> None:
    await limiter.set_spent("k", 1.0)
    for i in range(5):
        refused = await limiter.admit("k", 2, 1.0, now=1000.0 + i)
        assert not refused.allowed and refused.reason == "budget" and refused.remaining_requests == 2
    assert (await limiter.admit("k", 2, 2.0, now=1010.0)).allowed
    assert (await limiter.admit("k", 2, 2.0, now=1010.0)).allowed
    third = await limiter.admit("k", 2, 2.0, now=1010.0)
    assert third.reason == "rate_limit" and third.remaining_budget_usd == pytest.approx(1.0)


async def test_spent_roundtrip_and_keys_are_isolated(limiter: Limiter) -> None:
    assert await limiter.spent("a") == 0.0
    await limiter.set_spent("a", 12.345678)
    await limiter.record_spend("a", 0.000000150)  # one token at $0.15 per million
    await limiter.record_spend("b", 2.0)
    assert await limiter.spent("a") == pytest.approx(12.345678150, abs=1e-12)
    assert await limiter.spent("b") == 2.0
    for _ in range(3):
        assert (await limiter.admit("a", 3, None, now=1000.0)).allowed
    assert (await limiter.admit("b", 3, None, now=1000.0)).allowed


async def test_record_spend_rejects_non_finite_amounts(limiter: Limiter) -> None:
    with pytest.raises(ValueError):
        await limiter.record_spend("k", float("nan"))


async def test_memory_limiter_uses_its_clock_when_now_is_omitted() -> None:
    now = [1000.0]
    limiter = MemoryLimiter(window_s=10.0, clock=lambda: now[0])
    assert (await limiter.admit("k", 1, None)).allowed
    now[0] = 1009.5
    assert (await limiter.admit("k", 1, None)).retry_after_s == pytest.approx(0.5)
    now[0] = 1010.0
    assert (await limiter.admit("k", 1, None)).allowed


async def test_factory_picks_the_implementation() -> None:
    assert isinstance(make_limiter(None), MemoryLimiter)
    shared = make_limiter(REDIS_URL, prefix=unique_prefix(), fail_open=True, window_s=5.0)
    assert isinstance(shared, RedisLimiter) and shared.fail_open and shared.window_s == 5.0
    await shared.close()


async def test_holds_fill_the_budget_until_settled(limiter: Limiter) -> None:
    a = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("a", 0.4))
    b = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("b", 0.4))
    assert a.allowed and b.allowed and b.remaining_budget_usd == pytest.approx(0.6)  # net of a's hold
    c = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("c", 0.4))
    assert c.allowed  # 0.8 held < 1.0: admitted, holding 1.2 in all
    refused = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("d", 0.4))
    assert not refused.allowed and refused.reason == "budget_held" and refused.retry_after_s == 1.0
    assert refused.remaining_budget_usd == 0.0
    await limiter.settle("k", "a", 0.05)  # a cost less than it held
    assert await limiter.spent("k") == pytest.approx(0.05)
    assert (await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("d", 0.4))).allowed
    for hold_id in "bcd":
        await limiter.settle("k", hold_id, 0.3)
    assert await limiter.spent("k") == pytest.approx(0.95)
    last = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("e", 0.4))
    assert last.allowed and last.remaining_budget_usd == pytest.approx(0.05)  # nothing held any more
    await limiter.settle("k", "e", 0.3)
    spent = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("f", 0.4))
    assert not spent.allowed and spent.reason == "budget" and spent.retry_after_s is None


async def test_concurrent_holders_overshoot_by_at_most_one_request(limiter: Limiter) -> None:
    """Fifty requests at once, each holding and then costing $0.07, on a $1 budget: at most one past it
    (without holds all fifty would start, $3.50 on a $1 budget)."""
    async def request(i: int) -> bool:
        admission = await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold(f"r{i}", 0.07))
        if admission.allowed:
            await asyncio.sleep(0.01)
            await limiter.settle("k", f"r{i}", 0.07)
        return admission.allowed

    started = sum(await asyncio.gather(*(request(i) for i in range(50))))
    assert started == 15  # 14 x 0.07 = 0.98 held < 1.0 admits a 15th; 1.05 held refuses the rest
    assert await limiter.spent("k") == pytest.approx(1.05)


async def test_a_hold_never_settled_lapses(limiter: Limiter) -> None:
    assert (await limiter.admit("k", None, 1.0, now=1000.0, hold=Hold("lost", 1.0, ttl_s=30.0))).allowed
    held = await limiter.admit("k", None, 1.0, now=1029.0, hold=Hold("next", 0.1))
    assert held.reason == "budget_held"
    assert (await limiter.admit("k", None, 1.0, now=1030.0, hold=Hold("next", 0.1))).allowed  # its replica died
    await limiter.settle("k", "never-held", 0.2)  # a hold it does not know: the spend still counts
    assert await limiter.spent("k") == pytest.approx(0.2)


async def test_requests_without_a_budget_hold_nothing(limiter: Limiter) -> None:
    for i in range(5):
        assert (await limiter.admit("k", 10, None, now=1000.0, hold=Hold(f"h{i}", 100.0))).allowed
    assert (await limiter.admit("k", None, 1.0, now=1000.0)).allowed


async def test_a_budget_period_counts_its_own_spend_and_holds(limiter: Limiter) -> None:
    """Periods 100 and 200 of one key: each fills on its own; the rate window is the key's across both."""
    assert (await limiter.admit("k", 3, 1.0, now=1000.0, hold=Hold("a", 0.6, 60, 100), period=100)).allowed
    await limiter.settle("k", "a", 1.0, period=100)
    assert (await limiter.admit("k", 3, 1.0, now=1001.0, period=100)).reason == "budget"
    assert await limiter.spent("k", period=100) == pytest.approx(1.0)
    assert await limiter.spent("k") == 0.0  # the lifetime total is another account
    fresh = await limiter.admit("k", 3, 1.0, now=1002.0, hold=Hold("b", 0.6, 60, 200), period=200)
    assert fresh.allowed and fresh.remaining_budget_usd == pytest.approx(1.0)
    assert (await limiter.admit("k", 3, 1.0, now=1003.0, hold=Hold("c", 0.6, 60, 200), period=200)).allowed
    assert (await limiter.admit("k", 3, 1.0, now=1003.5, period=200)).reason == "budget_held"  # 1.2 held
    await limiter.record_spend("k", 0.25, period=100)  # a late settle of the earlier period stays there
    assert await limiter.spent("k", period=200) == 0.0
    await limiter.set_spent("k", 0.5, period=200)
    assert await limiter.spent("k", period=200) == pytest.approx(0.5)
    assert (await limiter.admit("k", 3, None, now=1004.0)).reason == "rate_limit"  # 3 admitted this minute


@needs_redis
async def test_a_periods_spend_expires_in_redis() -> None:
    prefix = unique_prefix()
    shared = RedisLimiter.from_url(REDIS_URL, prefix=prefix)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await shared.record_spend("k", 0.5, period=100)
        await shared.record_spend("k", 0.5)
        ttl = await client.pttl(f"pitstop:{prefix}:limits:{{k}}:spent@100")
        assert 39 * 86_400_000 < ttl <= 40 * 86_400_000
        assert await client.pttl(f"pitstop:{prefix}:limits:{{k}}:spent") == -1  # a lifetime total is kept
    finally:
        await client.aclose()
        await shared.close()
        await delete_prefix(prefix)


async def test_tpm_refuses_once_the_windows_tokens_reach_the_limit(limiter: Limiter) -> None:
    assert (await limiter.admit("k", None, None, now=1000.0, tpm_limit=100)).remaining_tokens == 100
    await limiter.record_tokens("k", 60, now=1001.0)
    admitted = await limiter.admit("k", None, None, now=1002.0, tpm_limit=100)
    assert admitted.allowed and admitted.remaining_tokens == 40
    await limiter.record_tokens("k", 50, now=1010.0)  # 110: past the limit by the last request's own size
    await limiter.record_tokens("other", 500, now=1010.0)  # keys are apart
    await limiter.record_tokens("k", -5, now=1011.0)  # nothing: a count is never negative
    refused = await limiter.admit("k", None, None, now=1020.0, tpm_limit=100)
    assert not refused.allowed and refused.reason == "token_limit" and refused.remaining_tokens == 0
    assert refused.retry_after_s == pytest.approx(41.0)  # the oldest, t=1001's 60, leave at 1061
    await limiter.record_tokens("k", 45, now=1030.0)  # 155
    assert not (await limiter.admit("k", None, None, now=1060.999, tpm_limit=100)).allowed
    again = await limiter.admit("k", None, None, now=1061.0, tpm_limit=100)  # t=1001 is a window old
    assert again.allowed and again.remaining_tokens == 5
    await limiter.record_tokens("k", 10, now=1062.0)  # 105
    refused = await limiter.admit("k", None, None, now=1063.0, tpm_limit=100)
    assert refused.reason == "token_limit" and refused.retry_after_s == pytest.approx(7.0)  # t=1010's go at 1070
    assert (await limiter.admit("k", None, None, now=1070.0, tpm_limit=100)).remaining_tokens == 45
    assert (await limiter.admit("k", None, None, now=1200.0, tpm_limit=100)).remaining_tokens == 100


async def test_a_token_refusal_takes_no_rate_slot_and_a_budget_refusal_comes_first(limiter: Limiter) -> None:
    await limiter.record_tokens("k", 100, now=1000.0)
    for t in range(5):
        refused = await limiter.admit("k", 2, None, now=1001.0 + t, tpm_limit=100)
        assert refused.reason == "token_limit" and refused.remaining_requests == 2
    first = await limiter.admit("k", 2, None, now=1060.0, tpm_limit=100)
    assert first.allowed and first.remaining_requests == 1
    await limiter.record_spend("k", 1.0)
    await limiter.record_tokens("k", 100, now=1061.0)
    assert (await limiter.admit("k", 2, 1.0, now=1062.0, tpm_limit=100)).reason == "budget"


async def test_concurrent_token_records_all_count(limiter: Limiter) -> None:
    await asyncio.gather(*(limiter.record_tokens("k", 7, now=1000.0) for _ in range(50)))
    assert (await limiter.admit("k", None, None, now=1001.0, tpm_limit=1000)).remaining_tokens == 1000 - 350
