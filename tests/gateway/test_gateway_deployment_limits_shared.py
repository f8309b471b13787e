"""Per-deployment rpm / tpm shared by two gateway replicas through one Redis, over real sockets: two
gateway apps with the same config (the fake upstreams `a` and `b` behind each model) send together at
most a quota to a deployment, the rest steered to the other deployment or refused with OpenAI's 429;
tokens likewise, a streamed answer's usage correcting them; with Redis killed each replica holds to its
own window and answers, and with Redis back the windows are shared again.

The replicas sync every 0.05 s; a test waits (wait_until) for two syncs of the replica that counted and
then two of the one that reads, so the second has read what the first wrote: no sleeps, no timing
asserted. Each module's gateways use a key prefix of their own (parallel workers share the Redis)."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_deployment_limits import chat, instance
from tests.gateway.test_limits import REDIS_URL, needs_redis, unique_prefix
from tests.gateway.upstream import UpstreamProcess
from tests.throwaway_redis import ThrowawayRedis

SYNC_S = 0.05


@contextmanager
def replicas(tmp: Path, models: list[dict], redis_url: str, prefix: str) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways on one Redis, each with its own outcome database, as two replicas of one config."""
    with ExitStack() as stack:
        gateways = []
        for name in ("one", "two"):
            (tmp / name).mkdir()
            raw = gateway_config(tmp / name, models, server={"allowed_fails": 1000, "num_retries": 1},
                                 redis_url=redis_url,
                                 deployment_limits={"sync_interval_s": SYNC_S, "redis_prefix": prefix})
            gateways.append(stack.enter_context(running_gateway(raw)))
        yield gateways[0], gateways[1]


def synced(*gateways: Gateway) -> None:
    """Each in turn has synced twice since now: the first's counts are written before the next reads."""
    for gateway in gateways:
        assert gateway.state is not None and gateway.state.deployment_sync is not None
        sync = gateway.state.deployment_sync
        done = sync.syncs
        wait_until(lambda: sync.syncs >= done + 2, what="two syncs with Redis")  # noqa: B023


def metric(gateway: Gateway, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{gateway.url}/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{{selector}}} ([0-9.e+-]+)$" if labels else rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


@pytest.fixture(scope="module")
def pair(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    a, b = upstream_processes
    models = [
        model_entry("steer", a.api_base, rpm=4), model_entry("steer", b.api_base),
        model_entry("alone", a.api_base, rpm=2),
        model_entry("tokens", a.api_base, tpm=300), model_entry("tokens", b.api_base),
        model_entry("streamed", a.api_base, tpm=300), model_entry("streamed", b.api_base),
    ]
    with replicas(tmp_path_factory.mktemp("shared-limits"), models, REDIS_URL, unique_prefix()) as gateways:
        yield gateways


@needs_redis
def test_two_replicas_send_a_deployment_at_most_its_rpm_together(pair: tuple[Gateway, Gateway],
                                                                 upstreams: tuple) -> None:
    one, two = pair
    a, b = upstreams
    assert [instance(chat(one, "steer", f"q{i}")) for i in range(3)] == ["from-a"] * 3
    synced(one, two)
    # two's own window is empty: without sharing all three would go to `a` (6 in its minute, rpm 4)
    assert [instance(chat(two, "steer", f"r{i}")) for i in range(3)] == ["from-a", "from-b", "from-b"]
    assert (a.stats()["requests"], b.stats()["requests"]) == (4, 2)
    assert metric(two, "pitstop_deployment_window_usage", deployment="steer#0", limit="rpm") == 4.0
    assert metric(two, "pitstop_deployment_limits_shared") == 1.0
    row = two.row(two.request_ids[-1])
    assert row["extra"]["deployment_limits"] == {"steer": {"skipped": {"steer#0": "rpm"}}}


@needs_redis
def test_with_the_quota_spent_on_both_replicas_each_answers_429_and_calls_no_upstream(
        pair: tuple[Gateway, Gateway], upstreams: tuple) -> None:
    one, two = pair
    a, _ = upstreams
    assert instance(chat(one, "alone", "first")) == "from-a"
    synced(one, two)
    assert instance(chat(two, "alone", "second")) == "from-a"
    with pytest.raises(openai.RateLimitError) as refused:
        two.openai().chat.completions.create(model="alone", messages=[{"role": "user", "content": "third"}])
    error = refused.value.response.json()["error"]
    assert error["code"] == "deployment_rate_limited" and "alone#0 rpm" in error["message"]
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 61
    synced(two, one)
    with pytest.raises(openai.RateLimitError):
        one.openai().chat.completions.create(model="alone", messages=[{"role": "user", "content": "fourth"}])
    assert a.stats()["requests"] == 2


@needs_redis
def test_tpm_counts_the_tokens_every_replica_sent(pair: tuple[Gateway, Gateway], upstreams: tuple) -> None:
    one, two = pair
    big = " ".join(["word"] * 160)  # an estimate of 201 tokens; 165 used (160 words and a 5-word answer)
    assert instance(chat(one, "tokens", big)) == "from-a"
    synced(one, two)
    assert instance(chat(two, "tokens", big)) == "from-b"  # 165 + 201 > 300: alone, two would send it to `a`
    assert instance(chat(two, "tokens", "hi")) == "from-a"
    assert metric(two, "pitstop_deployment_window_usage", deployment="tokens#0", limit="tpm") == 165.0 + 6.0


@needs_redis
def test_a_streamed_answers_usage_corrects_the_tokens_every_replica_sees(pair: tuple[Gateway, Gateway],
                                                                        upstreams: tuple) -> None:
    one, two = pair
    one_long_word = "x" * 800  # estimated 201 tokens; the upstream counts 1 + 5 answer words
    for gateway, other, counted in ((one, two, 6.0), (two, one, 12.0)):
        stream = gateway.openai().chat.completions.create(
            model="streamed", messages=[{"role": "user", "content": one_long_word}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("from-a")
        # the final usage chunk corrects the estimate in this replica's window as the stream ends (two's
        # also holds one's 6 by now)
        wait_until(lambda g=gateway, n=counted: metric(g, "pitstop_deployment_window_usage", deployment="streamed#0",
                                                       limit="tpm") == n, what="the streamed usage counted")
        synced(gateway, other)
    # each sees both replicas' corrected 6 tokens, not 201 + 201 (which would steer the next to `b`)
    assert metric(one, "pitstop_deployment_window_usage", deployment="streamed#0", limit="tpm") == 12.0
    assert metric(two, "pitstop_deployment_window_usage", deployment="streamed#0", limit="tpm") == 12.0
    assert instance(chat(one, "streamed", one_long_word)) == "from-a"
    assert upstreams[1].stats()["requests"] == 0


# ---- Redis away ------------------------------------------------------------------------------------


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    server = ThrowawayRedis()
    server.start()
    yield server
    server.kill()


def test_with_redis_down_each_replica_keeps_its_own_window_and_shares_again_when_it_is_back(
        upstreams: tuple, tmp_path: Path,
        throwaway_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pitstop.gateway")
    a, _ = upstreams
    models = [model_entry("outage", a.api_base, rpm=2)]
    with replicas(tmp_path, models, throwaway_redis.url, "outage") as (one, two):
        assert instance(chat(one, "outage", "first")) == "from-a"
        synced(one, two)
        assert instance(chat(two, "outage", "second")) == "from-a"
        assert chat(two, "outage", "third").status_code == 429  # shared: the quota is spent

        throwaway_redis.kill()
        for gateway in (one, two):
            wait_until(lambda g=gateway: (metric(g, "pitstop_deployment_limit_syncs_total", outcome="failed")
                                          or 0) >= 2, what="two failed syncs")
            assert metric(gateway, "pitstop_deployment_limits_shared") == 0.0
        # per replica now: each has its own 1 of 2 left, and answers; Redis is never waited for
        assert instance(chat(one, "outage", "fourth")) == "from-a"
        assert instance(chat(two, "outage", "fifth")) == "from-a"
        assert chat(two, "outage", "sixth").status_code == 429  # its own window is full
        assert a.stats()["requests"] == 4
        unavailable = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(unavailable) == 2  # once a replica, however many syncs failed

        throwaway_redis.start()  # empty: each replica's next sync writes its whole window again
        wait_until(lambda: metric(one, "pitstop_deployment_limits_shared") == 1.0
                   and metric(two, "pitstop_deployment_limits_shared") == 1.0, what="sharing again")
        synced(one, two, one)
        for gateway in (one, two):
            assert metric(gateway, "pitstop_deployment_window_usage", deployment="outage#0", limit="rpm") == 4.0
            assert chat(gateway, "outage", "seventh").status_code == 429
        assert a.stats()["requests"] == 4
