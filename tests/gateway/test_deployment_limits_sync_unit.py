"""Per-deployment windows shared by replicas through a real Redis, on a fake clock: two replicas (each a
pool and a DeploymentLimitSync of its own, as two gateways have) count what the other counted as of its
last sync, requests and corrected tokens; the others' seconds leave the window on their own between
syncs; a sync is idempotent and refills a Redis that lost its data; with Redis killed or hung each
replica falls back to its own window, logs once and shares again when Redis is back. Each test uses its
own key prefix (parallel workers share the Redis)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.config import ConfigError, parse_settings
from gateway.deployment_build import add_deployment, make_backend
from gateway.deployment_limits import DeploymentWindow
from gateway.deployment_limits_sync import DeploymentLimitSync
from gateway.deployments import Deployment, DeploymentPool
from gateway.model_list_config import ModelInfo
from storage.redis_deployment_windows import RedisDeploymentWindows
from tests.gateway.harness import gateway_config, model_entry
from tests.gateway.test_limits import REDIS_URL, delete_prefix, needs_redis, unique_prefix
from tests.throwaway_redis import ThrowawayRedis

pytestmark = pytest.mark.anyio
WALL = 1_700_000_000.0  # the fake wall clock less the fake monotonic one: a whole number of seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + WALL


class Replica:
    """One gateway's share of the test: a pool with one rate-limited deployment `m#0` and its sync."""

    def __init__(self, url: str, prefix: str, clock: FakeClock, name: str, rpm: int | None = None,
                 tpm: int | None = None) -> None:
        self.pool = DeploymentPool(clock=clock)
        self.window = DeploymentWindow(rpm, tpm, clock, shared_id="m-0", synced=True, wall=clock.wall)
        self.pool.add(Deployment("m#0", "m", None, ModelInfo(), "openai/m", window=self.window))  # type: ignore[arg-type]
        self.answers: list[bool] = []
        store = RedisDeploymentWindows.from_url(url, prefix, name, socket_timeout_s=0.2)
        self.sync = DeploymentLimitSync(store, self.pool, on_sync=self.answers.append)

    async def synced(self) -> bool:
        return await self.sync.sync_once()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = unique_prefix()
    yield name
    await delete_prefix(name)


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[tuple[Replica, Replica, FakeClock]]:
    """Two replicas of a deployment with rpm 4 and tpm 1000."""
    clock = FakeClock()
    a, b = (Replica(REDIS_URL, prefix, clock, name, rpm=4, tpm=1000) for name in ("a", "b"))
    yield a, b, clock
    await a.sync.close()
    await b.sync.close()


@needs_redis
async def test_a_replica_counts_the_others_requests_from_their_last_sync(
        replicas: tuple[Replica, Replica, FakeClock]) -> None:
    a, b, clock = replicas
    clock.now = 1000.5
    for _ in range(3):
        a.window.take(0)
    assert await a.synced() and await b.synced()
    assert b.window.usage() == (3, 0)
    clock.now = 1010.0
    assert b.window.at_limit(0) is None
    b.window.take(0)
    hit = b.window.at_limit(0)  # 3 of a's and 1 of its own: rpm 4
    # a's second (1000) counts until its end is 60 s old: 1061, when b has 1 request left
    assert hit is not None and hit.limit == "rpm" and hit.free_in_s == pytest.approx(51.0)
    assert a.window.at_limit(0) is None  # b has not synced since: a sees its own 3 only (the staleness)
    assert await a.synced() and a.window.usage() == (3, 0)  # nor does a sync of a's own: b's is not written
    assert await b.synced() and await a.synced()
    assert a.window.usage() == (4, 0) and a.window.at_limit(0) is not None
    clock.now = 1061.0  # a's requests leave b's window between syncs, and a's own
    assert b.window.usage() == (1, 0) and a.window.usage() == (1, 0)
    assert await b.synced() and b.window.usage() == (1, 0)
    assert a.answers == [True, True, True] and b.answers == [True, True, True]


@needs_redis
async def test_replicas_overshoot_by_at_most_what_the_other_started_before_it_was_read(
        replicas: tuple[Replica, Replica, FakeClock]) -> None:
    a, b, clock = replicas
    taken = {"a": 0, "b": 0}
    for _ in range(4):  # rpm 4: each takes one while it sees headroom, then a syncs, then b
        for name, replica in (("a", a), ("b", b)):
            if replica.window.at_limit(0) is None:
                replica.window.take(0)
                taken[name] += 1
        clock.now += 0.25
        assert await a.synced() and await b.synced()
    # Round 1: each alone (1 + 1). Round 2: a read before b wrote its first, so sees only its own and
    # takes; b sees 2 and takes (4). Round 3: a sees 2 + b's 1 (b's second came after a's read) and takes
    # a fifth; b sees 4. One over the quota: b's request a had not read yet, no more.
    assert taken == {"a": 3, "b": 2}
    assert a.window.usage() == b.window.usage() == (5, 0)
    assert a.window.at_limit(0) is not None and b.window.at_limit(0) is not None


@needs_redis
async def test_a_corrected_estimate_reaches_the_other_replica(replicas: tuple[Replica, Replica, FakeClock]) -> None:
    a, b, clock = replicas
    counted = a.window.take(600)  # the prompt's estimate, synced before the answer says what it used
    assert await a.synced() and await b.synced()
    assert b.window.usage() == (1, 600)
    hit = b.window.at_limit(500)
    assert hit is not None and hit.limit == "tpm" and hit.free_in_s == pytest.approx(61.0)
    clock.now += 5
    a.window.settle(counted, 100)
    assert await a.synced() and await b.synced()
    assert b.window.usage() == (1, 100) and b.window.at_limit(500) is None
    b.window.take(500)
    assert await b.synced() and await a.synced()
    assert a.window.usage() == (2, 600)


@needs_redis
async def test_a_sync_is_idempotent_and_refills_a_redis_that_lost_its_data(
        replicas: tuple[Replica, Replica, FakeClock], prefix: str) -> None:
    a, b, clock = replicas
    for _ in range(3):
        a.window.take(10)
    assert await a.synced() and await a.synced()  # the same window written twice counts once
    assert await b.synced() and b.window.usage() == (3, 30)
    await delete_prefix(prefix)  # Redis emptied (a restart without persistence, a flush)
    assert await b.synced() and b.window.usage() == (0, 0)
    assert await a.synced() and await b.synced() and b.window.usage() == (3, 30)


@needs_redis
async def test_seconds_out_of_the_window_leave_redis(replicas: tuple[Replica, Replica, FakeClock],
                                                     prefix: str) -> None:
    a, b, clock = replicas
    a.window.take(10)
    clock.now += 30
    a.window.take(20)
    assert await a.synced()
    client = redis.Redis.from_url(REDIS_URL)
    total, mine = a.sync.store.keys("m-0")
    assert sorted(client.hkeys(total)) == [b"1700001000:r", b"1700001000:t", b"1700001030:r", b"1700001030:t"]
    clock.now += 31  # the first second's end is 60 s old
    assert await a.synced() and await b.synced()
    assert sorted(client.hkeys(total)) == [b"1700001030:r", b"1700001030:t"] == sorted(client.hkeys(mine))
    assert b.window.usage() == (1, 20) and 0 < client.pttl(total) <= 120_000
    client.close()


def test_deployments_have_the_same_name_in_redis_on_every_replica(tmp_path: Path) -> None:
    entries = [model_entry("m", "http://127.0.0.1:9/v1", rpm=5), model_entry("m", "http://127.0.0.1:9/v1", rpm=5),
               model_entry("m", "http://127.0.0.1:8/v1", rpm=5), model_entry("n", "http://127.0.0.1:9/v1", tpm=9)]

    def ids(raw: dict) -> list[str]:
        settings = parse_settings(raw)
        pool = DeploymentPool()
        for entry in settings.model_list:
            add_deployment(pool, entry, make_backend(entry, settings), settings)
        assert all(d.window is not None and d.window.synced == (settings.redis_url is not None)
                   for d in pool.deployments)
        return [d.window.shared_id for d in pool.deployments if d.window is not None]

    first = ids(gateway_config(tmp_path, entries, redis_url=REDIS_URL))
    assert first == ids(gateway_config(tmp_path, entries, redis_url=REDIS_URL))  # another replica's config
    assert first[0].endswith("-0") and first[1] == first[0][:-1] + "1"  # two alike: the first and the second
    assert len(set(first)) == 4
    assert ids(gateway_config(tmp_path, entries)) == first  # without Redis: the same ids, nothing synced


# ---- Redis away ------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    throwaway = ThrowawayRedis()
    throwaway.start()
    yield throwaway
    throwaway.kill()


async def test_without_redis_each_replica_holds_to_its_own_window_and_shares_again_after(
        server: ThrowawayRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pitstop.gateway")
    clock = FakeClock()
    a, b = (Replica(server.url, "outage", clock, name, rpm=4) for name in ("a", "b"))
    for _ in range(3):
        a.window.take(0)
    assert await a.synced() and await b.synced() and b.window.usage() == (3, 0)

    server.kill()
    assert not await b.synced() and not await b.synced()
    assert b.window.usage() == (0, 0) and b.window.at_limit(0) is None  # its own window alone: fail open
    for _ in range(2):
        b.window.take(0)  # counted while Redis is away: the next sync writes them
    unavailable = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(unavailable) == 1 and unavailable[0].levelno == logging.ERROR  # once per outage
    assert b.answers == [True, False, False] and not b.sync.shared

    server.start()  # empty: no persistence
    assert await b.synced() and await a.synced()
    assert a.window.usage() == (5, 0) and a.window.at_limit(0) is not None
    assert await b.synced() and b.window.usage() == (5, 0)
    assert any("Redis answers again" in r.getMessage() for r in caplog.records) and b.sync.shared
    await a.sync.close()
    await b.sync.close()


async def test_a_hung_redis_does_not_hang_the_sync(server: ThrowawayRedis) -> None:
    clock = FakeClock()
    a = Replica(server.url, "hung", clock, "a", rpm=4)
    a.window.take(0)
    assert await a.synced()
    server.pause()  # accepts connections, answers nothing, until resumed
    # Only the 0.2 s socket timeouts (and the sync's own 2 s) can end this while the server is paused; the
    # outer limit is a hang guard far above them, not a speed check.
    assert not await asyncio.wait_for(a.synced(), timeout=30)
    server.resume()
    assert await a.synced() and a.window.usage() == (1, 0)
    await a.sync.close()


def test_a_bad_sync_interval_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    entries = [model_entry("m", "http://127.0.0.1:9/v1", rpm=5)]
    for bad in ({"sync_interval_s": 0}, {"sync_interval_s": "often"}, {"redis_prefix": ""}, {"sync": 1}):
        with pytest.raises(ConfigError, match="deployment_limits"):
            parse_settings(gateway_config(tmp_path, entries, redis_url=REDIS_URL, deployment_limits=bad))
    settings = parse_settings(gateway_config(tmp_path, entries, deployment_limits={"sync_interval_s": 1}))
    assert settings.deployment_limits.sync_interval_s == 1.0 and settings.deployment_limits.redis_prefix == "default"
