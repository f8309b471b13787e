"""OpenAI's Usage and Costs APIs over the outcome log, read with the openai SDK's admin client over a real
socket: tokens and requests by model and key, costs with what routing saved, a key reading only its own,
pages, the 4xx for bad parameters, and a 503 while the database is away."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from storage.keys import KeyStore
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    run_cli,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres

MASTER = "master-secret-for-usage-tests"
# The large model costs ten times the small one on both sides, so whatever the router predicts for a
# request's length, the large one's predicted cost is ten times the small one's: routing's baseline is 10x.
PRICES = {"small": (1e-6, 2e-6), "large": (1e-5, 2e-5)}


def config(tmp_path: Path, upstreams: tuple[UpstreamProcess, ...], storage_url: str | None = None) -> dict:
    # vLLM-shaped servers (direct transport): they serve embeddings too.
    models = [model_entry(name, upstream.api_base, provider="hosted_vllm", transport="auto", tier=tier,
                          price_in=PRICES[name][0], price_out=PRICES[name][1])
              for (name, tier), upstream in zip((("small", "weak"), ("large", "strong")), upstreams, strict=False)]
    group = {"name": "auto", "models": ["small", "large"], "router": "tier-prior", "cost_preference": 1.0}
    return gateway_config(tmp_path, models, [group], storage_url=storage_url,
                          auth={"require_keys": True, "master_key": MASTER})



@pytest.fixture
def gw(tmp_path: Path, upstreams: tuple[UpstreamProcess, UpstreamProcess], storage_url: str) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path, upstreams, storage_url)) as gateway:
        yield gateway


def admin(gw: Gateway, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, admin_api_key=key, max_retries=0)


def chat(gw: Gateway, secret: str, model: str, text: str) -> None:
    with gw.openai(api_key=secret) as client:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def run_batch(gw: Gateway, secret: str, texts: list[str]) -> None:
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "small", "messages": [{"role": "user", "content": text}]}}
             for i, text in enumerate(texts)]
    with gw.openai(api_key=secret) as client:
        uploaded = client.files.create(file=("in.jsonl", "\n".join(json.dumps(line) for line in lines).encode()),
                                       purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_until(lambda: client.batches.retrieve(batch.id).status == "completed", what="the batch completed")


def traffic(gw: Gateway) -> tuple[dict[str, str], dict[str, str]]:
    """Two keys' requests; (key name -> id, key name -> secret)."""
    store = KeyStore(gw.storage_url)
    ids, secrets = {}, {}
    for name in ("alice", "bob"):
        ids[name], secrets[name] = store.create(name)
    chat(gw, secrets["alice"], "auto", "[words:3] route me")  # the router picks small (cost preference 1)
    chat(gw, secrets["alice"], "auto", "[words:5] and me too")
    chat(gw, secrets["alice"], "large", "[words:2] straight to the large one")
    with gw.openai(api_key=secrets["alice"]) as client:
        client.embeddings.create(model="small", input=["one two three", "four five"])
        with pytest.raises(openai.BadRequestError):  # refused before any model read it: not counted
            client.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}],
                                           temperature="hot")  # type: ignore[arg-type]
    chat(gw, secrets["bob"], "small", "[words:4] bob asks")
    run_batch(gw, secrets["bob"], ["[words:1] line one", "[words:2] line two"])
    gw.flush()
    return ids, secrets


def by(rows: list[dict], *names: str) -> dict[tuple, dict[str, float]]:
    sums: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        line = sums[tuple(row[name] for name in names)]
        line["requests"] += 1
        line["input"] += row["prompt_tokens"] or 0
        line["output"] += row["completion_tokens"] or 0
        line["cost"] += row["cost_usd"] or 0.0
        line["baseline"] += row["baseline_cost_usd"] or 0.0
    return sums


def results(page: Any) -> list[Any]:
    return [result for bucket in page.data for result in bucket.results]


def test_usage_and_costs_add_up_the_log_by_model_and_key(gw: Gateway) -> None:
    ids, _ = traffic(gw)
    start = int(time.time()) - 3_600
    rows = [row for row in gw.rows() if row["status"] == "ok"]
    text = [row for row in rows if row["endpoint"] != "embedding"]
    assert len(text) == 6 and len(rows) == 7
    with admin(gw) as client:
        usage = client.admin.organization.usage
        page = usage.completions(start_time=start, bucket_width="1h", group_by=["model", "api_key_id"])
        got = {(r.model, r.api_key_id): r for r in results(page)}
        expected = by(text, "model", "api_key_id")
        assert set(got) == set(expected) == {("small", ids["alice"]), ("large", ids["alice"]), ("small", ids["bob"])}
        for group, line in expected.items():
            assert (got[group].num_model_requests, got[group].input_tokens, got[group].output_tokens) == \
                (line["requests"], line["input"], line["output"])
        assert got["small", ids["bob"]].num_model_requests == 3  # its request and the batch's two lines
        # Counted in whole hours, from the one holding start_time.
        assert [b.start_time for b in page.data][:2] == [start - start % 3_600, start - start % 3_600 + 3_600]

        batches = usage.completions(start_time=start, group_by=["batch"])
        assert {r.batch: r.num_model_requests for r in results(batches)} == {True: 2, False: 4}
        embedded = results(usage.embeddings(start_time=start, group_by=["model"]))
        assert [(r.model, r.num_model_requests, r.input_tokens) for r in embedded] == \
            [("small", 1, sum(row["prompt_tokens"] for row in rows if row["endpoint"] == "embedding"))]

        costs = client.admin.organization.usage.costs(start_time=start, group_by=["line_item"])
        amounts = {r.line_item: r.amount.value for r in results(costs)}
        assert amounts == {model: pytest.approx(line["cost"]) for (model,), line in by(rows, "model").items()}
        # Routing's baseline: the two routed requests at the large model's prices, ten times what they cost.
        routed = client.get("/organization/costs", cast_to=object, options={"params": {
            "start_time": start, "group_by[]": "route_group"}})
        lines = {r["route_group"]: r for bucket in routed["data"] for r in bucket["results"]}  # type: ignore[index]
        auto = [row for row in rows if row["route_group"] == "auto"]
        assert [row["model"] for row in auto] == ["small", "small"]
        assert lines["auto"]["baseline_amount"]["value"] == pytest.approx(10 * sum(row["cost_usd"] for row in auto))
        assert lines["auto"]["num_model_requests"] == 2
        assert lines[None]["baseline_amount"]["value"] == pytest.approx(lines[None]["amount"]["value"])
    with gw.http() as http:
        metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in http.get("/metrics").text.splitlines()
                   if line.startswith(("pitstop_baseline_cost_usd_total{", "pitstop_cost_usd_total{"))}
    assert metrics['pitstop_baseline_cost_usd_total{model="small",route_group="auto"}'] == pytest.approx(
        10 * metrics['pitstop_cost_usd_total{model="small",route_group="auto"}'])


def test_the_report_command_reads_the_same_lines(gw: Gateway, tmp_path: Path, upstreams: tuple) -> None:
    traffic(gw)
    rows = [row for row in gw.rows() if row["status"] == "ok"]
    raw = config(tmp_path, upstreams, gw.storage_url)
    done = run_cli("report", "usage", "--config", str(write_config(tmp_path / "report.yaml", raw)), "--json")
    assert done.returncode == 0, done.stderr
    lines = json.loads(done.stdout)
    groups = {line["route_group"]: line for line in lines["route_groups"]}
    expected = by(rows, "route_group")
    for (name,), line in expected.items():
        assert groups[name]["requests"] == line["requests"]
        assert groups[name]["cost_usd"] == pytest.approx(line["cost"], abs=1e-6)
        assert groups[name]["baseline_cost_usd"] == pytest.approx(line["baseline"], abs=1e-6)
    assert groups["auto"]["saved_usd"] == pytest.approx(0.9 * groups["auto"]["baseline_cost_usd"], abs=1e-6)
    assert lines["total"][0]["requests"] == len(rows)
    table = run_cli_here("report", "usage", "--config", str(tmp_path / "report.yaml"))
    assert table.returncode == 0 and "auto" in table.stdout and " 90.0%" in table.stdout, table.stdout


def test_a_key_reads_only_its_own_usage(gw: Gateway) -> None:
    ids, secrets = traffic(gw)
    start = int(time.time()) - 3_600
    with admin(gw, secrets["bob"]) as client:
        mine = results(client.admin.organization.usage.completions(start_time=start, group_by=["api_key_id"]))
        assert [(r.api_key_id, r.num_model_requests) for r in mine] == [(ids["bob"], 3)]
        with pytest.raises(openai.PermissionDeniedError, match="its own usage"):
            client.admin.organization.usage.completions(start_time=start, api_key_ids=[ids["alice"]])
    with admin(gw, "sk-pitstop-not-a-key") as client, pytest.raises(openai.AuthenticationError):
        client.admin.organization.usage.costs(start_time=start)


def test_pages_cover_the_range_once(gw: Gateway) -> None:
    traffic(gw)
    now = int(time.time())
    start = now - 10 * 60
    with admin(gw) as client:
        seen, pages, cursor = [], 0, None
        while True:
            page = client.admin.organization.usage.completions(
                start_time=start, end_time=now + 60, bucket_width="1m", limit=3,
                **({"page": cursor} if cursor else {}))
            pages += 1
            seen += [(b.start_time, b.end_time) for b in page.data]
            if not page.has_more:
                break
            cursor = page.next_page
            assert len(page.data) == 3
        whole = client.admin.organization.usage.completions(start_time=start, end_time=now + 60,
                                                            bucket_width="1m", limit=60)
    assert pages == 4 and seen == [(b.start_time, b.end_time) for b in whole.data]
    assert seen[0][0] == start - start % 60 and seen[-1][1] == -(-(now + 60) // 60) * 60  # whole minutes
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert sum(r.num_model_requests for r in results(whole)) == 6


BAD_PARAMETERS = [
    ("/organization/usage/completions", {}, "start_time"),
    ("/organization/usage/completions", {"start_time": "yesterday"}, "start_time"),
    ("/organization/usage/completions", {"start_time": 100, "end_time": 50}, "end_time"),
    ("/organization/usage/completions", {"start_time": -5}, "start_time"),
    ("/organization/costs", {"start_time": 100, "end_time": 10**20}, "end_time"),
    ("/organization/usage/completions", {"start_time": 100, "bucket_width": "2d"}, "bucket_width"),
    ("/organization/usage/completions", {"start_time": 100, "bucket_width": "1h", "limit": 169}, "limit"),
    ("/organization/usage/completions", {"start_time": 100, "group_by[]": "colour"}, "group_by"),
    ("/organization/usage/completions", {"start_time": 100, "user_ids[]": "user_1"}, "user_ids"),
    ("/organization/usage/completions", {"start_time": 100, "batch": "maybe"}, "batch"),
    ("/organization/usage/completions", {"start_time": 100, "page": "elsewhere"}, "page"),
    ("/organization/usage/embeddings", {"start_time": 100, "group_by[]": "batch"}, "group_by"),
    ("/organization/costs", {"start_time": 100, "bucket_width": "1h"}, "bucket_width"),
    ("/organization/costs", {"start_time": 100, "limit": 181}, "limit"),
]


def test_bad_parameters_are_clear_400s(tmp_path: Path, upstreams: tuple) -> None:
    with running_gateway(config(tmp_path, upstreams)) as gateway, admin(gateway) as client:
        for path, params, param in BAD_PARAMETERS:
            with pytest.raises(openai.BadRequestError) as refused:
                client.get(path, cast_to=object, options={"params": params})
            assert refused.value.body["param"] == param, (path, params)  # type: ignore[index]


def test_the_database_away_is_a_503_and_usage_returns_with_it(
        tmp_path: Path, upstreams: tuple, cluster: ThrowawayPostgres) -> None:
    with running_gateway(config(tmp_path, upstreams, cluster.url)) as gateway, admin(gateway) as client:
        traffic(gateway)
        start = int(time.time()) - 60
        cluster.stop("immediate")
        try:
            with pytest.raises(openai.InternalServerError, match="usage is unavailable") as refused:
                client.admin.organization.usage.costs(start_time=start)
            assert refused.value.status_code == 503
        finally:
            cluster.start()
        page = wait_until(lambda: _try(lambda: client.admin.organization.usage.costs(start_time=start)),
                          what="usage after the database came back")
        assert sum(r.num_model_requests for r in results(page)) == 7


def _try(call: Any) -> Any:
    try:
        return call()
    except openai.APIError:
        return None
