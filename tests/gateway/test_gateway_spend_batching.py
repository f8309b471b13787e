"""Keys' and teams' spend through the gateway, written with the outcome rows' batch (storage/spend.py): after
concurrent requests each row holds the sum of its requests' rows' cost_usd (SQLite and PostgreSQL); a request
admitted in one budget period and finished in the next counts in the first; a database outage while requests
are answered loses no spend and counts none twice (rows and spend wait in memory and in the spool)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.limits import periods
from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.harness import gateway_config, model_entry, read_outcomes, running_gateway, wait_until
from tests.gateway.test_gateway_outage import Traffic
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres

MASTER = "master-secret-for-spend-tests"
PROMPT = "[words:5] hello"  # 2 prompt words at $1e-6 and 5 answer words at $2e-6: $1.2e-5 a request
COST = 1.2e-5
SATURDAY_MIDNIGHT = 1_796_428_800  # 2026-12-05 00:00 UTC


def config(tmp_path: Path, upstream: UpstreamProcess, storage_url: str | None = None) -> dict:
    return gateway_config(tmp_path, [model_entry("up", upstream.api_base)], storage_url=storage_url,
                          auth={"require_keys": True, "master_key": MASTER})


def spent(url: str, key_id: str, team_id: str) -> tuple[float, float]:
    key, team = KeyStore(url).get(key_id), TeamStore(url).get(team_id)
    assert key is not None and team is not None
    return key.spent_usd, team.spent_usd


def test_concurrent_requests_spend_the_sum_of_their_rows(
        tmp_path: Path, upstream: UpstreamProcess, storage_url: str) -> None:
    with running_gateway(config(tmp_path, upstream, storage_url)) as gw:
        team = TeamStore(storage_url).create("platform", budget_usd=1.0, budget_period="month")
        key_id, secret = KeyStore(storage_url).create("app", budget_usd=1.0, budget_period="month", team_id=team.id)
        body = {"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": PROMPT}]}
        with gw.http(headers={"authorization": f"Bearer {secret}"}) as http, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: http.post("/v1/chat/completions", json=body), range(48)))
        assert [a.status_code for a in answers] == [200] * 48
        rows = gw.rows([a.headers["x-pitstop-request-id"] for a in answers])  # flushed: rows and spend
        logged = sum(row["cost_usd"] for row in rows)
        assert len(rows) == 48 and logged == pytest.approx(48 * COST)
        assert spent(storage_url, key_id, team.id) == (pytest.approx(logged), pytest.approx(logged))
        with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:  # as /v1/keys lists it
            listed = admin.get(f"/v1/keys/{key_id}").json()
        assert listed["spent_usd"] == pytest.approx(logged) and listed["period_spent_usd"] == pytest.approx(logged)


def test_a_request_counts_in_the_budget_period_it_was_admitted_in(
        tmp_path: Path, upstream: UpstreamProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admitted a second before Saturday, answered after it: Friday's, for its key and its team."""
    clock = {"now": SATURDAY_MIDNIGHT - 1.0}
    monkeypatch.setattr(periods, "now_s", lambda: clock["now"])
    with running_gateway(config(tmp_path, upstream)) as gw:
        url = gw.storage_url
        team = TeamStore(url).create("platform", budget_usd=1.0, budget_period="day")
        key_id, secret = KeyStore(url).create("app", budget_usd=1.0, budget_period="day", team_id=team.id)
        body = {"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": "[delay:1] " + PROMPT}]}
        with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
            before = upstream.stats()["requests"]
            late = threading.Thread(target=lambda: http.post("/v1/chat/completions", json=body).raise_for_status())
            late.start()
            wait_until(lambda: upstream.stats()["requests"] > before, what="the request admitted and sent")
            clock["now"] = SATURDAY_MIDNIGHT + 1.0
            late.join()
            http.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": PROMPT}]}
                      ).raise_for_status()
        rows = {r["key_period_start"]: r for r in gw.rows()}  # flushed: rows and spend
        friday = SATURDAY_MIDNIGHT - 86_400
        assert sorted(rows) == [friday, SATURDAY_MIDNIGHT] and rows[friday]["team_period_start"] == friday
        saturdays, fridays = rows[SATURDAY_MIDNIGHT]["cost_usd"], rows[friday]["cost_usd"]
        key, stored_team = KeyStore(url).get(key_id), TeamStore(url).get(team.id)
        assert key is not None and stored_team is not None
        for row in (key, stored_team):  # Saturday's total holds Saturday's request alone
            assert (row.period_start, row.period_spent_usd) == (SATURDAY_MIDNIGHT, pytest.approx(saturdays))
            assert row.spent_usd == pytest.approx(saturdays + fridays)


def test_a_database_outage_mid_traffic_loses_no_spend_and_counts_none_twice(
        upstreams: tuple[UpstreamProcess, UpstreamProcess], cluster: ThrowawayPostgres, tmp_path: Path) -> None:
    raw = config(tmp_path, upstreams[0], cluster.url)
    raw["storage"]["max_buffer"] = 25  # small, so the outage overflows memory into the disk spool
    team = key_id = ""
    with running_gateway(raw) as gw:
        team = TeamStore(cluster.url).create("platform").id
        key_id, secret = KeyStore(cluster.url).create("app", team_id=team)
        traffic = Traffic(gw.url, {"authorization": f"Bearer {secret}"})
        try:
            traffic.wait_for(20)
            cluster.stop("immediate")
            traffic.wait_for(len(traffic.ids) + 80)  # all answered while the database is down
            assert gw.state is not None and gw.state.writer.stats().spooled > 0
            cluster.start()
            traffic.wait_for(len(traffic.ids) + 20)
        finally:
            ids = traffic.stop()
        gw.flush()
        rows = read_outcomes(cluster.url)
        assert sorted(r["request_id"] for r in rows) == sorted(ids) and len(ids) >= 120
        logged = sum(r["cost_usd"] for r in rows)
        assert logged > 0
        assert spent(cluster.url, key_id, team) == (pytest.approx(logged), pytest.approx(logged))
