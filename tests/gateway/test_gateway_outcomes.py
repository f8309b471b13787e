"""Outcome rows, on SQLite and on PostgreSQL: every request leaves exactly one row with the right
fields; feedback is stored; `pitstop export outcomes` writes them with feedback joined."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from tests.gateway.harness import (
    PRICE_IN,
    PRICE_OUT,
    Gateway,
    gateway_config,
    model_entry,
    read_feedback,
    run_cli,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]



@pytest.fixture
def gw(upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path, storage_url: str) -> Iterator[Gateway]:
    a, _ = upstreams
    models = [model_entry("direct", a.api_base, tier="weak"),
              model_entry("viallm", a.api_base, provider="hosted_vllm", tier="strong")]
    groups = [{"name": "auto", "models": ["direct", "viallm"], "cost_preference": 0.25}]
    with running_gateway(gateway_config(tmp_path, models, groups, storage_url=storage_url)) as gateway:
        yield gateway


def post(http: httpx.Client, path: str, body: dict, **headers: str) -> httpx.Response:
    return http.post(path, json=body, headers=headers)


def msgs(text: str) -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_every_request_leaves_exactly_one_row(gw: Gateway, storage_url: str) -> None:
    with gw.http() as http:
        ok = post(http, "/v1/chat/completions", {"model": "direct", "messages": msgs("one two")},
                  **{"x-session-id": "s-1"})
        routed = post(http, "/v1/chat/completions", {"model": "auto", "messages": msgs("route me please")})
        streamed = post(http, "/v1/chat/completions", {"model": "viallm", "messages": msgs("a b c"), "stream": True,
                                                       "stream_options": {"include_usage": True}})
        tools = post(http, "/v1/chat/completions", {"model": "viallm", "messages": msgs("x"), "tools": TOOLS})
        legacy = post(http, "/v1/completions", {"model": "direct", "prompt": "p q", "stream": True})
        bad = post(http, "/v1/chat/completions", {"model": "direct", "messages": []})
        unknown = post(http, "/v1/chat/completions", {"model": "ghost", "messages": msgs("x")})
        failed = post(http, "/v1/chat/completions", {"model": "direct", "messages": msgs("[fail:500]")})
        broken = post(http, "/v1/chat/completions", {"model": "direct", "messages": msgs("[break:1]"), "stream": True})
        with http.stream("POST", "/v1/chat/completions",
                         json={"model": "direct", "messages": msgs("[words:200] [delay:0.05]"), "stream": True}
                         ) as left:
            next(left.iter_bytes())  # the client reads one event and goes away
    responses = [ok, routed, streamed, tools, legacy, bad, unknown, failed, broken, left]
    ids = [r.headers["x-pitstop-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    rows = wait_until(lambda: (found := gw.rows()) and len(found) >= len(ids) and found, what="all rows")
    by_id = {row["request_id"]: row for row in rows}
    assert len(rows) == len(ids) and set(by_id) == set(ids)

    row = by_id[ids[0]]
    assert (row["model"], row["requested_model"], row["route_group"], row["session_id"]) == \
        ("direct", "direct", None, "s-1")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (4, 5, 0)
    assert row["cost_usd"] == pytest.approx(4 * PRICE_IN + 5 * PRICE_OUT)
    assert row["prompt"] == msgs("one two") and row["completion"] == "from-a w1 w2 w3 w4"
    assert (row["status"], row["http_status"], row["error"], row["stream"]) == ("ok", 200, None, False)
    assert row["latency_s"] > 0 and row["ttft_s"] is None and row["created_at"] is not None

    row = by_id[ids[1]]
    assert (row["route_group"], row["requested_model"]) == ("auto", "auto")
    assert row["model"] == routed.headers["x-pitstop-model"] and row["model"] in ("direct", "viallm")
    assert (row["router_name"], row["router_version"], row["cost_preference"]) == ("tier-prior", "1", 0.25)
    assert set(row["router_scores"]) == {"direct", "viallm"} and row["propensity"] == 1.0

    row = by_id[ids[2]]
    assert (row["stream"], row["status"], row["prompt_tokens"], row["completion_tokens"]) == (True, "ok", 5, 5)
    assert 0 < row["ttft_s"] <= row["latency_s"]
    assert by_id[ids[3]]["tool_calls"] == ["lookup"] and by_id[ids[3]]["finish_reason"] == "tool_calls"
    assert (by_id[ids[4]]["prompt"], by_id[ids[4]]["completion"]) == ("p q", "from-a w1 w2 w3 w4")
    assert (by_id[ids[5]]["status"], by_id[ids[5]]["http_status"], by_id[ids[5]]["model"]) == ("error", 400, None)
    assert (by_id[ids[6]]["status"], by_id[ids[6]]["http_status"], by_id[ids[6]]["requested_model"]) == \
        ("error", 404, "ghost")
    assert (by_id[ids[7]]["status"], by_id[ids[7]]["http_status"], by_id[ids[7]]["model"]) == ("error", 500, "direct")
    assert (by_id[ids[8]]["status"], by_id[ids[8]]["stream"]) == ("error", True)
    assert (by_id[ids[9]]["status"], by_id[ids[9]]["http_status"]) == ("aborted", 499)
    # A stream cut before its usage chunk (a break, a client that left) still pays for what was
    # generated: the gateway's estimate, marked as one. Rows that reached no upstream pay nothing.
    for cut in (by_id[ids[8]], by_id[ids[9]]):
        assert cut["extra"]["usage_estimated"] is True
        assert cut["prompt_tokens"] >= 1 and cut["completion_tokens"] >= 1
        assert cut["cost_usd"] == pytest.approx(cut["prompt_tokens"] * PRICE_IN + cut["completion_tokens"] * PRICE_OUT)
    assert (by_id[ids[5]]["cost_usd"], by_id[ids[5]]["completion_tokens"]) == (0.0, 0)
    assert "usage_estimated" not in (by_id[ids[0]]["extra"] or {}) and "usage_estimated" not in (by_id[ids[5]]["extra"] or {})


def test_feedback_is_stored_and_exported_with_the_outcomes(gw: Gateway, storage_url: str, tmp_path: Path) -> None:
    with gw.http() as http:
        first = post(http, "/v1/chat/completions", {"model": "direct", "messages": msgs("rate me")},
                     **{"x-session-id": "sess-x"})
        second = post(http, "/v1/chat/completions", {"model": "viallm", "messages": msgs("and me"), "tools": TOOLS},
                      **{"x-session-id": "sess-y"})
        ids = [first.headers["x-pitstop-request-id"], second.headers["x-pitstop-request-id"]]
        accepted = [post(http, "/v1/feedback", {"request_id": ids[0], "value": 1}),
                    post(http, "/v1/feedback", {"request_id": ids[0], "metric": "quality", "value": 0.5}),
                    post(http, "/v1/feedback", {"session_id": "sess-y", "value": 0.25, "extra": {"by": "judge"}})]
        assert [r.status_code for r in accepted] == [202, 202, 202]
        assert all(r.json() == {"accepted": True} for r in accepted)
        refused = [post(http, "/v1/feedback", body) for body in (
            {"value": 1}, {"request_id": ids[0]}, {"request_id": ids[0], "value": "good"},
            {"request_id": ids[0], "value": 1, "metric": ""}, {"request_id": ids[0], "value": 1, "color": "red"},
            {"request_id": 5, "value": 1}, {"request_id": ids[0], "value": 1, "extra": [1]})]
        assert [r.status_code for r in refused] == [400] * len(refused)
        assert all(r.json()["error"]["type"] == "invalid_request_error" for r in refused)
    gw.flush()
    feedback = read_feedback(storage_url)
    assert sorted((f["request_id"], f["session_id"], f["metric"], f["value"]) for f in feedback
                  if f["request_id"]) == [(ids[0], None, "quality", 0.5), (ids[0], None, "quality", 1.0)]
    assert [(f["session_id"], f["value"], f["extra"]) for f in feedback if not f["request_id"]] == \
        [("sess-y", 0.25, {"by": "judge"})]

    config = write_config(tmp_path / "export.yaml", gateway_config(tmp_path, [model_entry("direct", "http://x/v1")],
                                                                   storage_url=storage_url))
    exported = {}
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"outcomes.{fmt}"
        result = run_cli("export", "outcomes", "--config", str(config), "--format", fmt, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert "wrote 2 rows" in result.stdout
        if fmt == "jsonl":
            exported[fmt] = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            exported[fmt] = pq.read_table(out).to_pylist()
    for rows in exported.values():
        by_id = {r["request_id"]: r for r in rows}
        assert set(by_id) == set(ids)
        assert (by_id[ids[0]]["quality"], by_id[ids[0]]["quality_source"]) == (0.75, "request")
        assert (by_id[ids[1]]["quality"], by_id[ids[1]]["quality_source"]) == (0.25, "session")
        assert (by_id[ids[0]]["model"], by_id[ids[0]]["prompt"], by_id[ids[0]]["status"]) == ("direct", "rate me", "ok")
        assert by_id[ids[1]]["tool_calls"] == ["lookup"] and by_id[ids[1]]["session_id"] == "sess-y"
        assert by_id[ids[0]]["completion_tokens"] == 5


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_before_the_answer_cancels_it_and_is_charged_its_prompt(
        gw: Gateway, upstreams: tuple[UpstreamProcess, UpstreamProcess], stream: bool) -> None:
    """A client that leaves while the upstream is still working (a whole answer, or a stream before
    its first chunk) cancels the call, and its row pays for the prompt the upstream read: leaving
    before each answer must not make a key's requests free."""
    prompt = "[delay:2] " + "word " * 40
    with gw.http() as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={"model": "direct", "messages": msgs(prompt), "stream": stream},
                  timeout=0.3)
    rows = wait_until(gw.rows, what="the aborted row")
    assert [(r["status"], r["http_status"], r["model"]) for r in rows] == [("aborted", 499, "direct")]
    row = rows[0]
    assert row["extra"]["usage_estimated"] is True and row["deployment"] == "direct#0"
    assert row["prompt_tokens"] >= len(prompt) // 4 and row["completion_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * PRICE_IN)
    assert gw.state.pool.by_model["direct"][0].outstanding == 0


def test_a_request_refused_upstream_is_not_charged(gw: Gateway) -> None:
    """An upstream's error answer (here a 400) bills nothing, so the row costs nothing either."""
    with gw.http() as http:
        refused = post(http, "/v1/chat/completions", {"model": "direct", "messages": msgs("[fail:400]")})
    assert refused.status_code == 400
    (row,) = wait_until(gw.rows, what="the row")
    assert (row["status"], row["cost_usd"], row["prompt_tokens"]) == ("error", 0.0, 0)
    assert "usage_estimated" not in (row["extra"] or {})


def test_nul_characters_do_not_lose_rows(gw: Gateway, storage_url: str) -> None:
    """JSON allows \\u0000; PostgreSQL text and JSONB do not. The rows must still arrive."""
    with gw.http() as http:
        responses = [
            post(http, "/v1/chat/completions", {"model": "direct", "messages": msgs("a\x00b"), "session_id": "s\x00"}),
            post(http, "/v1/completions", {"model": "viallm", "prompt": "nul\x00"}),
            post(http, "/v1/chat/completions", {"model": "ghost\x00", "messages": msgs("x")}),
        ]
        feedback = post(http, "/v1/feedback", {"request_id": "r\x00", "value": 1, "extra": {"k\x00": "v\x00"}})
    assert [r.status_code for r in responses] == [200, 200, 404] and feedback.status_code == 202
    ids = [r.headers["x-pitstop-request-id"] for r in responses]
    rows = {r["request_id"]: r for r in gw.rows()}
    assert set(rows) == set(ids)
    assert rows[ids[0]]["prompt"][1]["content"] in ("a\x00b", "a\ufffdb")  # SQLite keeps it; PostgreSQL can't
    assert rows[ids[2]]["requested_model"].startswith("ghost")
    assert len(read_feedback(storage_url)) == 1
    assert gw.state.writer.stats().rejected == 0
