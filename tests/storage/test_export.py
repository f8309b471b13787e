"""Training-set export: long format, feedback joined per request or per session, JSONL and Parquet."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.db import create_engine, session_factory
from storage.export import EXPORT_SCHEMA, export_outcomes, prompt_text
from storage.models import Feedback, Outcome

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def seed(url: str) -> None:
    engine = create_engine(url)
    with session_factory(engine).begin() as session:
        session.add_all(
            [
                Outcome(
                    request_id="a",
                    created_at=T0,
                    session_id="s1",
                    turn=0,
                    model="small",
                    prompt=[
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": [{"type": "text", "text": "what is 2+2?"}]},
                    ],
                    route_group="auto",
                    router_name="mf",
                    router_scores={"small": 0.4, "large": 0.9},
                    propensity=0.05,
                    explore_epsilon=0.1,
                    explore_pool=["large", "small"],
                    cost_usd=0.001,
                    prompt_tokens=12,
                    completion_tokens=3,
                    latency_s=0.2,
                    finish_reason="stop",
                    tool_calls=["calculator"],
                ),
                Outcome(
                    request_id="b",
                    created_at=T0 + timedelta(minutes=1),
                    session_id="s1",
                    turn=1,
                    model="large",
                ),
                Outcome(
                    request_id="c",
                    created_at=T0 + timedelta(minutes=2),
                    session_id="s2",
                    route_group="auto",
                    model="small",
                    prompt="hi",
                ),
                Feedback(request_id="a", session_id="s1", metric="thumbs", value=1.0),
                Feedback(request_id="a", session_id="s1", metric="judge", value=0.5),
                Feedback(session_id="s1", metric="task_success", value=0.0),  # session-level only
            ]
        )
    engine.dispose()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_joins_feedback_per_request_then_session(db_url: str, tmp_path: Path, fmt: str) -> None:
    seed(db_url)
    out = tmp_path / f"train.{fmt}"
    assert export_outcomes(db_url, out, format=fmt) == 3  # type: ignore[arg-type]
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        table = pq.read_table(out)
        assert table.schema.equals(EXPORT_SCHEMA)
        rows = table.to_pylist()
    by_id = {row["request_id"]: row for row in rows}
    assert [row["request_id"] for row in rows] == ["a", "b", "c"]

    a, b, c = by_id["a"], by_id["b"], by_id["c"]
    assert a["quality"] == pytest.approx(0.75) and a["quality_source"] == "request"
    assert b["quality"] == 0.0 and b["quality_source"] == "session"  # falls back to s1's session feedback
    assert c["quality"] is None and c["quality_source"] is None
    assert a["prompt"] == "what is 2+2?" and c["prompt"] == "hi" and b["prompt"] is None
    assert a["model"] == "small" and a["cost_usd"] == 0.001 and a["prompt_tokens"] == 12
    assert a["session_id"] == "s1" and a["turn"] == 0 and a["finish_reason"] == "stop"
    assert a["tool_calls"] == ["calculator"] and a["router_name"] == "mf"
    scores = a["router_scores"] if fmt == "jsonl" else dict(a["router_scores"])
    assert scores == {"small": 0.4, "large": 0.9}
    assert (a["propensity"], a["explore_epsilon"], a["explore_pool"]) == (0.05, 0.1, ["large", "small"])
    assert b["explore_epsilon"] is None and b["explore_pool"] is None
    messages = a["messages"] if fmt == "jsonl" else json.loads(a["messages"])
    assert messages[0] == {"role": "system", "content": "be brief"}


def test_export_since_and_metric_filters(db_url: str, tmp_path: Path) -> None:
    seed(db_url)
    out = tmp_path / "train.jsonl"
    assert export_outcomes(db_url, out, since=T0 + timedelta(seconds=30), metric="judge") == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["request_id"] for row in rows] == ["b", "c"]
    assert all(row["quality"] is None for row in rows)  # the only "judge" feedback is for "a"
    assert datetime.fromisoformat(rows[0]["created_at"]) == T0 + timedelta(minutes=1)
    # "a" is left out, and with it its request feedback; "b" keeps its session's (s1's) feedback
    assert export_outcomes(db_url, out, since=T0 + timedelta(seconds=30)) == 2
    b, c = (json.loads(line) for line in out.read_text().splitlines())
    assert (b["quality"], b["quality_source"], c["quality"]) == (0.0, "session", None)


def test_export_of_one_route_group(db_url: str, tmp_path: Path) -> None:
    seed(db_url)
    out = tmp_path / "auto.jsonl"
    assert export_outcomes(db_url, out, route_group="auto") == 2
    assert [json.loads(line)["request_id"] for line in out.read_text().splitlines()] == ["a", "c"]
    assert export_outcomes(db_url, out, route_group="auto", since=T0 + timedelta(seconds=30)) == 1
    assert export_outcomes(db_url, out, route_group="other") == 0


def test_empty_export_writes_a_valid_parquet_file(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "empty.parquet"
    assert export_outcomes(db_url, out, format="parquet") == 0
    assert pq.read_table(out).num_rows == 0


def test_prompt_text_shapes() -> None:
    assert prompt_text(None) is None
    assert prompt_text("plain") == "plain"
    assert prompt_text(["a", "b"]) == "a\nb"
    chat = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}, {"role": "tool"}]
    assert prompt_text(chat) == "first"


def test_the_narrowed_feedback_plan_returns_what_the_whole_table_plan_does(db_url: str) -> None:
    """bench/outcome_export.py's log, read with each filter both ways (`measure` asserts the rows agree)."""
    from bench.outcome_export import measure  # noqa: PLC0415
    from bench.outcome_export import seed as seed_log  # noqa: PLC0415

    engine = create_engine(db_url)
    seed_log(engine, 2000)
    results = measure(engine, 2000, repeat=1)
    engine.dispose()
    assert [(r["filter"], r["rows"]) for r in results] == [
        ("none", 2000), ("last 1% of time", 20), ("one group (10%)", 200), ("one group, last 1% of time (0.1%)", 2)]
    assert all(r["with_feedback"] == r["rows"] for r in results)


def test_request_feedback_counts_from_the_requests_own_key_or_the_master(db_url: str, tmp_path: Path) -> None:
    """A tenant that learns another's request id cannot grade it: only the request's own key's feedback,
    and the master key's (no key), is averaged."""
    engine = create_engine(db_url)
    with session_factory(engine).begin() as session:
        session.add_all([
            Outcome(request_id="mine", created_at=T0, api_key_id="key-a", model="m"),
            Outcome(request_id="open", created_at=T0 + timedelta(minutes=1), model="m"),  # no key
            Feedback(request_id="mine", api_key_id="key-a", metric="q", value=1.0),
            Feedback(request_id="mine", api_key_id="key-b", metric="q", value=-50.0),  # another tenant
            Feedback(request_id="mine", metric="q", value=0.0),  # the master key
            Feedback(request_id="open", api_key_id="key-b", metric="q", value=-50.0),
        ])
    engine.dispose()
    out = tmp_path / "train.jsonl"
    for narrow in ({}, {"since": T0}):  # both plans of export_query
        assert export_outcomes(db_url, out, **narrow) == 2
        rows = {row["request_id"]: row for row in map(json.loads, out.read_text().splitlines())}
        assert rows["mine"]["quality"] == pytest.approx(0.5) and rows["open"]["quality"] is None
