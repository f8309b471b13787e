"""Budget alerts through the gateway: a key's spend crossing 50% and 100% of its budget POSTs one event each
to a webhook (a real HTTP server here), once per crossing with one gateway in process and with two
replicas sharing Redis; a budget period starts them afresh; a webhook that fails is retried, and one that
is down is given up, counted and never in a request's way; a webhook endpoint that takes budget events
gets them signed."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.budget_alerts import crossed
from gateway.limits import periods
from storage.keys import KeyStore
from storage.webhooks import BUDGET_EVENT, WebhookStore
from tests.gateway.harness import Gateway, Receiver, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_budget_periods import forget_limits
from tests.gateway.test_gateway_webhooks import FAST
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import free_port

BUDGET = 3e-5  # three requests of $1.2e-5 (2 prompt words at $1e-6, 5 answer words at $2e-6)
TUESDAY_NOON = datetime(2026, 12, 8, 12, tzinfo=UTC).timestamp()


def config(tmp_path: Path, upstream: UpstreamProcess, hook_url: str | None, **extra: Any) -> dict:
    return gateway_config(tmp_path, [model_entry("m", upstream.api_base)],
                          alerts={"webhook_url": hook_url, "budget_thresholds": [0.5, 1.0]},
                          **{"auth": {"require_keys": True}, "webhooks": FAST, **extra})


def ask(gw: Gateway, secret: str) -> bool:
    """One request; False when the key's budget refused it."""
    with gw.openai(api_key=secret) as client:
        try:
            client.chat.completions.create(model="m", max_tokens=5,
                                           messages=[{"role": "user", "content": "[words:5] hello"}])
        except openai.RateLimitError:
            return False
    return True


def test_crossing_is_from_below_to_at_or_past() -> None:
    assert crossed([0.5, 0.8, 1.0], 10.0, 4.0, 5.0) == [0.5]
    assert crossed([0.5, 0.8, 1.0], 10.0, 5.0, 12.0) == [0.8, 1.0]
    assert crossed([0.5, 0.8, 1.0], 10.0, 5.0, 7.0) == []  # 50% was crossed before


def test_each_threshold_is_told_once_and_a_period_starts_them_afresh(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], receiver: tuple[Receiver, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    hook, url = receiver
    monkeypatch.setattr(periods, "now_s", lambda: TUESDAY_NOON)
    with running_gateway(config(tmp_path, upstreams[0], url)) as gw:
        key_id, secret = KeyStore(gw.storage_url).create("team-a", budget_usd=BUDGET, budget_period="day")
        hook.refuse = 1  # the first post fails: it is tried again
        assert [ask(gw, secret) for _ in range(4)] == [True, True, True, False]
        events = wait_until(lambda: len(hook.events) == 2 and hook.events, what="two alerts")
        first, last = sorted(events, key=lambda e: e["threshold"])  # the refused one came second
        assert (first["threshold"], last["threshold"]) == (0.5, 1.0)
        assert (first["type"], first["key_id"], first["key_name"], first["budget_usd"]) == (
            "budget.threshold_crossed", key_id, "team-a", BUDGET)
        assert first["spent_usd"] == pytest.approx(2.4e-5) and last["spent_usd"] == pytest.approx(3.6e-5)
        assert (last["budget_period"], last["period_start"], last["period_renews_at"]) == (
            "day", "2026-12-08T00:00:00Z", "2026-12-09T00:00:00Z")
        assert "has spent 50% of its $0.00003 budget for this day (UTC) ($0.000024)" in first["text"]
        assert "its requests are refused until 2026-12-09T00:00:00Z" in last["text"]
        assert len(hook.posts) == 3

        monkeypatch.setattr(periods, "now_s", lambda: TUESDAY_NOON + 86_400)
        assert [ask(gw, secret) for _ in range(4)] == [True, True, True, False]
        wait_until(lambda: len(hook.events) == 4, what="the next day's alerts")
        assert sorted((e["threshold"], e["period_start"]) for e in hook.events[2:]) == [
            (0.5, "2026-12-09T00:00:00Z"), (1.0, "2026-12-09T00:00:00Z")]
        with gw.http() as http:
            metrics = http.get("/metrics").text
    assert f'pitstop_webhook_deliveries_total{{event_type="{BUDGET_EVENT}",outcome="delivered"}} 4.0' in metrics


@needs_redis
def test_two_replicas_on_redis_tell_each_crossing_once(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    raw = config(tmp_path, upstreams[0], url, redis_url=REDIS_URL)
    with ExitStack() as stack:
        replicas = [stack.enter_context(running_gateway(raw)) for _ in range(2)]
        key_id, secret = KeyStore(replicas[0].storage_url).create("shared", budget_usd=BUDGET)
        stack.callback(forget_limits, key_id)
        answered = [ask(replicas[i % 2], secret) for i in range(6)]
        assert answered == [True, True, True, False, False, False]
        wait_until(lambda: len(hook.events) == 2, what="two alerts")
    assert sorted(e["threshold"] for e in hook.events) == [0.5, 1.0]
    # Each replica's outbox posts its own crossing: the two may arrive in either order.
    spent = max(hook.events, key=lambda e: e["threshold"])
    assert spent["budget_period"] is None  # a lifetime budget
    assert "until it is raised" in spent["text"]


def test_a_webhook_that_is_down_is_counted_and_never_in_the_way(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    raw = config(tmp_path, upstreams[0], nowhere, webhooks={**FAST, "give_up_after_s": 1.0})
    with running_gateway(raw) as gw:
        _, secret = KeyStore(gw.storage_url).create("team-b", budget_usd=BUDGET)
        assert [ask(gw, secret) for _ in range(4)] == [True, True, True, False]
        failed = f'pitstop_webhook_deliveries_total{{event_type="{BUDGET_EVENT}",outcome="failed"}} 2.0'
        with gw.http() as http:
            wait_until(lambda: failed in http.get("/metrics").text, what="two alerts given up")
    assert {(d["url"], d["status"]) for d in WebhookStore(gw.storage_url).deliveries()} == {(nowhere, "failed")}


def test_a_webhook_endpoint_taking_budget_events_gets_them_signed(
        tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    with running_gateway(config(tmp_path, upstreams[0], None, auth={"require_keys": True, "master_key": "sk-m"})) \
            as gw, gw.openai(api_key="sk-m") as admin:
        endpoint = admin.webhooks.create(name="budgets", url=url, event_types=[BUDGET_EVENT])
        key_id, secret = KeyStore(gw.storage_url).create("team-c", budget_usd=BUDGET)
        assert [ask(gw, secret) for _ in range(4)] == [True, True, True, False]
        wait_until(lambda: len(hook.events) == 2, what="two alerts")
        for body, headers in hook.taken:
            admin.webhooks.verify_signature(body, headers, secret=endpoint.signing_secret)
    assert {(e["object"], e["type"], e["data"]["key_id"]) for e in hook.events} == {("event", BUDGET_EVENT, key_id)}
    assert sorted(e["data"]["threshold"] for e in hook.events) == [0.5, 1.0]
    assert all(e["id"].startswith("evt_") and "has spent" in e["data"]["text"] for e in hook.events)
