"""A key's budget per UTC day (or week, or month) through the gateway, with the in-process limiter and
with Redis: spent, refused with the time it renews, whole again the next day, and still spent after a
restart within the day (seeded from the database's period total). The clock periods are read from is
moved by the test; the gateway runs in this process."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
import redis

from gateway.limits import periods
from storage.keys import KeyStore
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    run_cli,
    run_cli_here,
    running_gateway,
    write_config,
)
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-budget-period-tests"
TUESDAY_NOON = datetime(2026, 12, 8, 12, tzinfo=UTC).timestamp()
DAY = 86_400
# Each request: 2 prompt words at $1e-6 and 5 answer words at $2e-6, $1.2e-5; three spend the budget.
BUDGET = 3e-5


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def limits_backend(request: pytest.FixtureRequest) -> dict:
    return {"redis_url": REDIS_URL} if request.param == "redis" else {}


def config(tmp_path: Path, upstream: UpstreamProcess, extra: dict) -> dict:
    return gateway_config(tmp_path, [model_entry("m", upstream.api_base)],
                          auth={"require_keys": True, "master_key": MASTER}, **extra)


def spend_until_refused(gw: Gateway, secret: str) -> tuple[int, openai.RateLimitError]:
    with gw.openai(api_key=secret) as client:
        for sent in range(10):
            try:
                client.chat.completions.create(model="m", max_tokens=5,
                                               messages=[{"role": "user", "content": "[words:5] hello"}])
            except openai.RateLimitError as refused:
                return sent, refused
    raise AssertionError("the budget never refused")


def key_of(gw: Gateway, key_id: str) -> dict:
    with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as http:
        return http.get(f"/v1/keys/{key_id}").json()


def settled(gw: Gateway, key_id: str, usd: float) -> dict:
    gw.flush()  # the spend goes into the key's row with the outcome rows' batch
    key = key_of(gw, key_id)
    assert key["period_spent_usd"] == pytest.approx(usd), "the key's period spend in the database"
    return key


def test_a_daily_budget_renews_at_midnight_and_survives_a_restart(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], limits_backend: dict,
        monkeypatch: pytest.MonkeyPatch) -> None:
    raw = config(tmp_path, upstreams[0], limits_backend)
    monkeypatch.setattr(periods, "now_s", lambda: TUESDAY_NOON)
    created: dict = {}
    try:
        with running_gateway(raw) as gw:
            with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as http:
                created = http.post("/v1/keys", json={"name": "team", "budget_usd": BUDGET,
                                                      "budget_period": "day"}).json()
            assert (created["budget_period"], created["period_spent_usd"]) == ("day", 0.0)
            assert created["period_renews_at"] == TUESDAY_NOON + DAY / 2  # Wednesday 00:00 UTC
            sent, refused = spend_until_refused(gw, created["secret"])
            assert sent == 3 and refused.body["code"] == "budget_exceeded"  # type: ignore[index]
            assert "for this day (UTC); it renews at 2026-12-09T00:00:00Z" in refused.message
            settled(gw, created["id"], 3.6e-5)

            monkeypatch.setattr(periods, "now_s", lambda: TUESDAY_NOON + DAY)  # Wednesday noon
            assert key_of(gw, created["id"])["period_spent_usd"] == 0.0
            sent, _ = spend_until_refused(gw, created["secret"])
            assert sent == 3
            key = settled(gw, created["id"], 3.6e-5)
            assert key["spent_usd"] == pytest.approx(7.2e-5)  # the lifetime total goes on

        with running_gateway(raw) as gw:  # a restart on Wednesday: still spent (a fresh limiter, seeded)
            if limits_backend:
                forget_limits(created["id"])  # a Redis that lost its data, too
            assert spend_until_refused(gw, created["secret"])[0] == 0
            monkeypatch.setattr(periods, "now_s", lambda: TUESDAY_NOON + 2 * DAY)  # Thursday
            assert spend_until_refused(gw, created["secret"])[0] == 3
    finally:
        if limits_backend and created:
            forget_limits(created["id"])


def forget_limits(key_id: str) -> None:
    with redis.Redis.from_url(REDIS_URL) as client:
        for name in client.scan_iter(match=f"pitstop:default:limits:{{{key_id}}}:*"):
            client.delete(name)


def test_bad_budget_periods_are_400s(tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    with running_gateway(config(tmp_path, upstreams[0], {})) as gw, \
            gw.http(headers={"authorization": f"Bearer {MASTER}"}) as http:
        for value in ("fortnight", 7):
            refused = http.post("/v1/keys", json={"name": "x", "budget_usd": 1, "budget_period": value})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "budget_period"
        key = http.post("/v1/keys", json={"name": "y", "budget_usd": 1}).json()
        assert (key["budget_period"], key["period_spent_usd"], key["period_renews_at"]) == (None, None, None)
        changed = http.patch(f"/v1/keys/{key['id']}", json={"budget_period": "week"}).json()
        assert changed["budget_period"] == "week" and changed["period_spent_usd"] == 0.0


def test_the_cli_creates_and_lists_a_periodic_budget(tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, [model_entry("m", "http://127.0.0.1:9/v1")])
    path = write_config(tmp_path / "pitstop.yaml", raw)
    made = run_cli("keys", "create", "--config", str(path), "--name", "team", "--budget", "5",
                   "--budget-period", "week")
    assert made.returncode == 0, made.stderr
    listed = run_cli_here("keys", "list", "--config", str(path))
    assert "budget=5.0/week" in listed.stdout, listed.stdout
    assert run_cli_here("keys", "create", "--config", str(path), "--name", "x", "--budget-period", "year").returncode == 2


def test_answers_say_what_is_left_of_the_keys_limits(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(periods, "now_s", lambda: TUESDAY_NOON)
    with running_gateway(config(tmp_path, upstreams[0], {})) as gw:
        store = KeyStore(gw.storage_url)
        _, secret = store.create("team", rpm_limit=5, budget_usd=BUDGET, budget_period="day")
        _, unlimited = store.create("free")
        messages = [{"role": "user", "content": "[words:5] hello"}]
        with gw.openai(api_key=secret) as client:
            seen = [client.chat.completions.with_raw_response.create(model="m", max_tokens=5, messages=messages,
                                                                     stream=stream).headers
                    for stream in (False, True)]
        with gw.openai(api_key=unlimited) as client:
            free = client.chat.completions.with_raw_response.create(model="m", messages=messages).headers
    assert [(h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) for h in seen] == [
        ("5", "4"), ("5", "3")]
    # What was left when each was admitted: the first request's $1.2e-5 was settled before its answer.
    assert [float(h["x-pitstop-budget-remaining-usd"]) for h in seen] == [pytest.approx(BUDGET),
                                                                          pytest.approx(BUDGET - 1.2e-5)]
    assert seen[1]["x-pitstop-budget-renews-at"] == "2026-12-09T00:00:00Z"
    assert not any(name.startswith(("x-ratelimit", "x-pitstop-budget")) for name in free)
