"""Teams through the gateway, over real sockets with the openai SDK: two keys of one team spend the team's
budget and request rate together while each is under its own (in process and on Redis); a request in
flight on one key holds the team's budget from the other; refusals are OpenAI's 429s naming the team,
with the headers key refusals carry; a restart keeps the team's spend (SQLite and PostgreSQL, and a
Redis that lost its data); the team's models bound its keys'; rows, usage and costs know the team (as
OpenAI's project); a team's change reaches another replica at once through Redis; a team's budget
crossing a threshold is an alert naming it."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import gateway.auth
from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.harness import Gateway, Receiver, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_budget_periods import forget_limits
from tests.gateway.test_gateway_webhooks import FAST
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-team-tests"
PROMPT = "[words:5] hello"  # 2 prompt words at $1e-6 and 5 answer words at $2e-6: $1.2e-5 a request
COST = 1.2e-5
BUDGET = 3e-5  # three requests' worth: the third takes it past


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def limits_backend(request: pytest.FixtureRequest) -> dict:
    return {"redis_url": REDIS_URL} if request.param == "redis" else {}


def config(tmp_path: Path, upstream: UpstreamProcess, storage_url: str | None = None, **extra: Any) -> dict:
    return gateway_config(tmp_path, [model_entry("up", upstream.api_base), model_entry("other", upstream.api_base)],
                          storage_url=storage_url, auth={"require_keys": True, "master_key": MASTER}, **extra)


def ask(gw: Gateway, secret: str, model: str = "up", text: str = PROMPT) -> openai.APIStatusError | None:
    """One chat request; the SDK's error where it was refused."""
    with gw.openai(api_key=secret) as client:
        try:
            client.chat.completions.create(model=model, max_tokens=5, messages=[{"role": "user", "content": text}])
        except openai.APIStatusError as refused:
            return refused
    return None


def raw_ask(gw: Gateway, secret: str) -> httpx.Response:
    with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
        return http.post("/v1/chat/completions", json={"model": "up", "max_tokens": 5,
                                                        "messages": [{"role": "user", "content": PROMPT}]})


def team_with_keys(url: str, keys: int = 2, **limits: Any) -> tuple[str, list[tuple[str, str]]]:
    """A team with `limits`, and `keys` keys of it, each with a budget and rate of its own far above."""
    team = TeamStore(url).create("platform", **limits)
    store = KeyStore(url)
    return team.id, [store.create(f"app-{i}", rpm_limit=100, budget_usd=1.0, team_id=team.id) for i in range(keys)]


def test_two_keys_exhaust_the_teams_budget_together_and_a_restart_keeps_it(
        tmp_path: Path, upstream: UpstreamProcess, storage_url: str, limits_backend: dict) -> None:
    raw = config(tmp_path, upstream, storage_url, **limits_backend)
    team_id = ""
    try:
        with running_gateway(raw) as gw:
            team_id, [(a_id, a), (_, b)] = team_with_keys(gw.storage_url, budget_usd=BUDGET)
            assert [ask(gw, secret) for secret in (a, b, a)] == [None, None, None]
            refused = ask(gw, b)
            assert isinstance(refused, openai.RateLimitError) and refused.code == "budget_exceeded"
            assert f"this API key's team 'platform' ({team_id}) has spent its budget" in refused.message
            assert refused.response.headers["x-pitstop-budget-remaining-usd"] == "0.000000"
            assert "x-ratelimit-limit-requests" in refused.response.headers  # the key's, still
        team = TeamStore(storage_url).get(team_id)
        assert team is not None and team.spent_usd == pytest.approx(3 * COST)  # both keys' spend, in its row
        assert KeyStore(storage_url).get(a_id).spent_usd == pytest.approx(2 * COST)  # type: ignore[union-attr]

        with running_gateway(raw) as gw:  # restarted: the team is still spent
            if limits_backend:
                forget_limits("team:" + team_id)  # and Redis lost it: seeded from the database
            refused = ask(gw, a)
            assert isinstance(refused, openai.RateLimitError) and refused.code == "budget_exceeded"
            with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
                assert admin.patch(f"/v1/teams/{team_id}", json={"budget_usd": 1.0}).status_code == 200
            assert ask(gw, a) is None  # a raised team budget admits again, at once
    finally:
        if limits_backend and team_id:
            forget_limits("team:" + team_id)


def test_two_keys_share_the_teams_request_rate(tmp_path: Path, upstream: UpstreamProcess,
                                               limits_backend: dict) -> None:
    team_id = ""
    try:
        with running_gateway(config(tmp_path, upstream, **limits_backend)) as gw:
            team_id, [(_, a)] = team_with_keys(gw.storage_url, keys=1, rpm_limit=3)
            _, b = KeyStore(gw.storage_url).create("app-b", rpm_limit=2, team_id=team_id)
            answers = [raw_ask(gw, secret) for secret in (a, b, a, b)]
            assert [r.status_code for r in answers] == [200, 200, 200, 429]
            # Each answer says what is left of the tighter limit: b's own after its first, else the team's.
            assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["2", "1", "0", "0"]
            refused = answers[3]
            assert refused.headers["x-ratelimit-limit-requests"] == "3"
            assert 0 < int(refused.headers["retry-after"]) <= 60
            error = refused.json()["error"]
            assert (error["code"], error["type"]) == ("rate_limit_exceeded", "rate_limit_error")
            assert f"rate limit reached for this API key's team 'platform' ({team_id})" in error["message"]
            with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
                assert admin.patch(f"/v1/teams/{team_id}", json={"rpm_limit": None}).status_code == 200
            # The refused request gave b's slot back: b has one of its own two left, then its own limit.
            assert [raw_ask(gw, b).status_code for _ in range(2)] == [200, 429]
            assert "for this API key" in raw_ask(gw, b).json()["error"]["message"]
            rows = gw.rows()
        assert {r["team_id"] for r in rows if r["status"] == "ok"} == {team_id}
    finally:
        if limits_backend and team_id:
            forget_limits("team:" + team_id)


def test_a_request_in_flight_holds_the_teams_budget_from_the_other_key(
        tmp_path: Path, upstream: UpstreamProcess) -> None:
    with running_gateway(config(tmp_path, upstream)) as gw:
        # Each request holds its worst case, $1.4e-5 here: one in flight fills a $1e-5 budget.
        _, [(_, a), (_, b)] = team_with_keys(gw.storage_url, budget_usd=1e-5)
        slow = threading.Thread(target=ask, args=(gw, a, "up", "[delay:2] [words:5] hello"))
        slow.start()
        wait_until(lambda: upstream.stats()["requests"] == 1, what="the slow request upstream")
        held = ask(gw, b)
        slow.join()
        assert isinstance(held, openai.RateLimitError) and held.code == "budget_held"
        assert "held by its keys' requests in flight" in held.message and "'platform'" in held.message
        spent = ask(gw, b)  # the slow one settled: the team has spent its budget
        assert isinstance(spent, openai.RateLimitError) and spent.code == "budget_exceeded"
    assert upstream.stats()["requests"] == 1


def test_a_team_narrows_its_keys_models(tmp_path: Path, upstream: UpstreamProcess) -> None:
    with running_gateway(config(tmp_path, upstream)) as gw:
        team = TeamStore(gw.storage_url).create("platform", models=["up"])
        _, secret = KeyStore(gw.storage_url).create("app", team_id=team.id)  # no list of its own
        refused = ask(gw, secret, "other")
        assert isinstance(refused, openai.PermissionDeniedError) and refused.code == "model_not_allowed"
        assert "team 'platform'" in refused.message and "it may use: up" in refused.message
        with gw.openai(api_key=secret) as client:
            assert [m.id for m in client.models.list()] == ["up"]
        assert ask(gw, secret) is None
        with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
            wider = admin.post("/v1/keys", json={"name": "wide", "team_id": team.id, "models": ["up", "other"]})
            assert wider.status_code == 400 and wider.json()["error"]["param"] == "models"
            assert "'other' is not among the models of team 'platform'" in wider.json()["error"]["message"]


def test_usage_and_costs_group_by_team_as_openais_projects(tmp_path: Path, upstream: UpstreamProcess) -> None:
    with running_gateway(config(tmp_path, upstream)) as gw:
        team_id, [(_, a), (_, b)] = team_with_keys(gw.storage_url)
        _, loner = KeyStore(gw.storage_url).create("loner")
        for secret in (a, b, loner):
            assert ask(gw, secret) is None
        gw.flush()
        admin = openai.OpenAI(base_url=gw.url + "/v1", api_key=MASTER, admin_api_key=MASTER, max_retries=0)
        start = int(time.time()) - 3600  # the range the requests fall in
        usage = admin.admin.organization.usage.completions(start_time=start, group_by=["project_id"])
        lines = {r.project_id: r.num_model_requests for bucket in usage.data for r in bucket.results}
        assert lines == {team_id: 2, None: 1}
        costs = admin.admin.organization.usage.costs(start_time=start, project_ids=[team_id])
        assert sum(r.amount.value for bucket in costs.data for r in bucket.results) == pytest.approx(2 * COST)


@needs_redis
def test_a_team_changed_on_one_replica_reaches_the_other_at_once(
        tmp_path: Path, upstream: UpstreamProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cached keys are never read again here: only the change event can make the other replica see it.
    monkeypatch.setattr(gateway.auth, "_CACHE_TTL_S", 3600.0)
    raw = config(tmp_path, upstream, redis_url=REDIS_URL)
    with ExitStack() as stack:
        one, two = (stack.enter_context(running_gateway(raw)) for _ in range(2))
        team_id, [(_, secret)] = team_with_keys(one.storage_url, keys=1)
        stack.callback(forget_limits, "team:" + team_id)
        for replica in (one, two):
            events = replica.state.key_events  # type: ignore[union-attr]
            wait_until(lambda events=events: events.subscribed.is_set(), what="subscribed to key changes")
        assert ask(two, secret) is None  # the key (and its team) cached there now
        with one.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
            assert admin.patch(f"/v1/teams/{team_id}", json={"budget_usd": 0}).status_code == 200
        refused = wait_until(lambda: ask(two, secret), what="the other replica refusing the key's team")
        assert isinstance(refused, openai.RateLimitError) and refused.code == "budget_exceeded"


def test_a_teams_budget_crossing_is_an_alert_naming_the_team(
        tmp_path: Path, upstream: UpstreamProcess, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    raw = config(tmp_path, upstream, alerts={"webhook_url": url, "budget_thresholds": [0.5, 1.0]}, webhooks=FAST)
    with running_gateway(raw) as gw:
        team_id, [(_, a), (_, b)] = team_with_keys(gw.storage_url, budget_usd=BUDGET)
        assert [ask(gw, secret) is None for secret in (a, b, a, b)] == [True, True, True, False]
        events = wait_until(lambda: len(hook.events) == 2 and hook.events, what="two alerts")
    half, whole = sorted(events, key=lambda e: e["threshold"])
    assert (half["team_id"], half["team_name"], half["key_id"], half["budget_usd"]) == (
        team_id, "platform", None, BUDGET)
    assert half["spent_usd"] == pytest.approx(2 * COST) and whole["spent_usd"] == pytest.approx(3 * COST)
    assert "team 'platform' has spent its whole $0.00003 budget" in whole["text"]
    assert "its keys' requests are refused until it is raised" in whole["text"]
