"""Redis limiter specifics: server time, key layout, and exactness across gateway processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.limits import RedisLimiter
from tests.gateway.test_limits import REDIS_URL, delete_prefix, needs_redis, unique_prefix

pytestmark = [pytest.mark.anyio, needs_redis]

REPO_ROOT = Path(__file__).resolve().parents[2]

# One gateway-like process: connects, waits for "go" on stdin, then hammers one key from many coroutines.
# Each admitted request "runs" briefly, then records its cost, as the gateway does after a response
# (with `hold`: holding its cost from admission and settling it, as the gateway does for keys with budgets).
WORKER = """
import asyncio, json, sys, uuid
from gateway.limits import RedisLimiter
from gateway.limits.base import Hold

async def main(url, prefix, key_id, rpm, budget, cost, coroutines, attempts, hold=False):
    limiter = RedisLimiter.from_url(url, prefix=prefix)
    await limiter.spent(key_id)  # connect before the start line
    print("ready", flush=True)
    sys.stdin.readline()
    admitted, reasons = 0, set()

    async def hammer():
        nonlocal admitted
        for _ in range(attempts):
            held = Hold(uuid.uuid4().hex, cost) if hold else None
            admission = await limiter.admit(key_id, rpm, budget, hold=held)
            if not admission.allowed:
                reasons.add(admission.reason)
                continue
            admitted += 1
            if cost:
                await asyncio.sleep(0.002)
                if held:
                    await limiter.settle(key_id, held.hold_id, cost)
                else:
                    await limiter.record_spend(key_id, cost)

    await asyncio.gather(*(hammer() for _ in range(coroutines)))
    await limiter.close()
    print(json.dumps({"admitted": admitted, "reasons": sorted(reasons)}), flush=True)

args = json.loads(sys.argv[1])
asyncio.run(main(**args))
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = unique_prefix()
    yield name
    await delete_prefix(name)


def run_gateways(count: int, **worker_args: object) -> list[dict]:
    """Start `count` worker processes, release them together, return their reports."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(worker_args)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs)
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


async def test_server_time_window_slides(prefix: str) -> None:
    limiter = RedisLimiter.from_url(REDIS_URL, prefix=prefix, window_s=0.3)
    try:
        for _ in range(3):
            assert (await limiter.admit("k", 3, None)).allowed
        refused = await limiter.admit("k", 3, None)
        assert not refused.allowed and refused.reason == "rate_limit"
        assert refused.retry_after_s is not None and 0 < refused.retry_after_s <= 0.3
        await asyncio.sleep(refused.retry_after_s + 0.01)
        assert (await limiter.admit("k", 3, None)).allowed
    finally:
        await limiter.close()


async def test_keys_are_prefixed_and_windows_expire(prefix: str) -> None:
    limiter = RedisLimiter.from_url(REDIS_URL, prefix=prefix, window_s=2.0)
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await limiter.admit("key-1", 5, 1.0)
        await limiter.record_spend("key-1", 0.25)
        keys = sorted([key async for key in client.scan_iter(match=f"pitstop:{prefix}:*")])
        assert keys == [
            f"pitstop:{prefix}:limits:{{key-1}}:spent",
            f"pitstop:{prefix}:limits:{{key-1}}:window",
        ]
        assert 0 < await client.pttl(keys[1]) <= 2000
        assert await client.ttl(keys[0]) == -1  # spend is durable state, not a window
        assert await client.get(keys[0]) == "250000000"  # nano-USD
    finally:
        await client.aclose()
        await limiter.close()


async def test_two_gateways_admit_exactly_the_rpm_limit(prefix: str) -> None:
    reports = await asyncio.to_thread(
        run_gateways,
        2,
        url=REDIS_URL,
        prefix=prefix,
        key_id="shared",
        rpm=200,
        budget=None,
        cost=0.0,
        coroutines=8,
        attempts=40,
    )
    assert sum(r["admitted"] for r in reports) == 200  # out of 640 attempts
    assert all(r["admitted"] > 0 for r in reports)  # both really competed
    assert {reason for r in reports for reason in r["reasons"]} == {"rate_limit"}
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await client.zcard(f"pitstop:{prefix}:limits:{{shared}}:window") == 200
    finally:
        await client.aclose()


async def test_two_gateways_share_one_budget(prefix: str) -> None:
    budget, cost, coroutines = 1.0, 0.05, 8
    reports = await asyncio.to_thread(
        run_gateways,
        2,
        url=REDIS_URL,
        prefix=prefix,
        key_id="shared",
        rpm=None,
        budget=budget,
        cost=cost,
        coroutines=coroutines,
        attempts=30,
    )
    admitted = sum(r["admitted"] for r in reports)
    affordable = round(budget / cost)  # 20 requests reach the budget
    in_flight_max = 2 * coroutines - 1  # others running when the last request was admitted
    # The last admission saw spent < budget: at most affordable-1 done, plus those in flight, plus itself.
    assert affordable <= admitted <= affordable - 1 + in_flight_max + 1
    limiter = RedisLimiter.from_url(REDIS_URL, prefix=prefix)
    try:
        assert await limiter.spent("shared") == pytest.approx(admitted * cost)
        assert not (await limiter.admit("shared", None, budget)).allowed
    finally:
        await limiter.close()


async def test_two_gateways_holding_their_cost_spend_the_budget_exactly(prefix: str) -> None:
    budget, cost, coroutines = 1.0, 0.05, 8
    reports = await asyncio.to_thread(run_gateways, 2, url=REDIS_URL, prefix=prefix, key_id="held", rpm=None,
                                      budget=budget, cost=cost, coroutines=coroutines, attempts=30, hold=True)
    assert sum(r["admitted"] for r in reports) == round(budget / cost)  # 20, where holdless may start 35
    assert {reason for r in reports for reason in r["reasons"]} <= {"budget", "budget_held"}
    limiter = RedisLimiter.from_url(REDIS_URL, prefix=prefix)
    try:
        assert await limiter.spent("held") == pytest.approx(budget)
    finally:
        await limiter.close()
