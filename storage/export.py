"""Export outcomes as a training set in long format: one row per (prompt, model), feedback joined.

`quality` is the mean feedback value for the request, sent with the request's own API key or with
none (the master key; feedback from another key is left out: a tenant cannot grade another's
requests); failing that, the mean of session-level feedback (rows with a session id and no request
id) for its session, sent with the request's API key (sessions are per key; no key matches no key);
else null. `quality_source`
says which ("request", "session" or null) so a training job can weight or filter. Embeddings
requests are left out: they have no answer to route or rank; so are answers the response cache
served (the same answer again, at no cost: they would teach a router that the model is free).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Select, func, or_, select
from sqlalchemy.engine import URL, Engine

from storage.db import as_engine
from storage.models import Feedback, Outcome

ExportFormat = Literal["jsonl", "parquet"]
CHUNK_ROWS = 5_000

EXPORT_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("session_id", pa.string()),
        ("turn", pa.int64()),
        ("prompt", pa.string()),  # text of the last user message (or the prompt string)
        ("messages", pa.string()),  # the stored prompt as JSON, when stored
        ("model", pa.string()),
        ("requested_model", pa.string()),
        ("route_group", pa.string()),
        ("quality", pa.float64()),
        ("quality_source", pa.string()),
        ("cost_usd", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("ttft_s", pa.float64()),
        ("latency_s", pa.float64()),
        ("finish_reason", pa.string()),
        ("status", pa.string()),
        ("tool_calls", pa.list_(pa.string())),
        ("completion", pa.string()),
        ("router_name", pa.string()),
        ("router_version", pa.string()),
        ("router_scores", pa.map_(pa.string(), pa.float64())),
        ("cost_preference", pa.float64()),
        ("propensity", pa.float64()),
        ("explore_epsilon", pa.float64()),
        ("explore_pool", pa.list_(pa.string())),
        ("routed_model", pa.string()),
        ("verify_outcome", pa.string()),
        ("rank_score", pa.float64()),
    ]
)
OUTCOME_FIELDS = [
    name
    for name in EXPORT_SCHEMA.names
    if name not in ("prompt", "messages", "quality", "quality_source") and name in Outcome.__table__.c
]


def prompt_text(prompt: Any) -> str | None:
    """The text a router scores: the prompt string, or the last user message of a chat."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
        return "\n".join(prompt)
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    return None


def _content_text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def export_query(since: datetime | None = None, metric: str | None = None, route_group: str | None = None,
                 *, narrow_feedback: bool = True) -> Select[Any]:
    """Outcomes with their feedback averaged per request and per session, oldest first. With a filter,
    only the kept requests' feedback is averaged (a semi-join on feedback's indexed request_id and
    session_id) rather than the whole feedback table's; `narrow_feedback=False` keeps the whole-table
    plan, for bench/outcome_export.py to measure against."""
    outcomes, feedback = Outcome.__table__, Feedback.__table__
    kept = [outcomes.c.created_at >= since] if since is not None else []
    if route_group is not None:  # served by the (route_group, created_at) index
        kept.append(outcomes.c.route_group == route_group)
    metric_filter = [feedback.c.metric == metric] if metric is not None else []
    narrow = kept and narrow_feedback
    for_requests = [feedback.c.request_id.in_(select(outcomes.c.request_id).where(*kept))] if narrow else []
    for_sessions = [feedback.c.session_id.in_(select(outcomes.c.session_id).where(*kept))] if narrow else []
    asked = outcomes.alias("asked")  # the request the feedback names: its key must be the sender's
    by_request = (
        select(feedback.c.request_id, func.avg(feedback.c.value).label("quality"))
        .select_from(feedback.join(asked, asked.c.request_id == feedback.c.request_id))
        .where(feedback.c.request_id.is_not(None), *metric_filter, *for_requests,
               or_(feedback.c.api_key_id.is_(None), feedback.c.api_key_id == asked.c.api_key_id))
        .group_by(feedback.c.request_id)
        .subquery("quality_by_request")
    )
    by_session = (  # per key: sessions belong to the key that made them (agent_sessions/identity.py)
        select(feedback.c.session_id, feedback.c.api_key_id, func.avg(feedback.c.value).label("quality"))
        .where(feedback.c.request_id.is_(None), feedback.c.session_id.is_not(None), *metric_filter, *for_sessions)
        .group_by(feedback.c.session_id, feedback.c.api_key_id)
        .subquery("quality_by_session")
    )
    return (
        select(
            *(outcomes.c[name] for name in OUTCOME_FIELDS),
            outcomes.c.prompt,
            by_request.c.quality.label("request_quality"),
            by_session.c.quality.label("session_quality"),
        )
        .select_from(
            outcomes.outerjoin(by_request, by_request.c.request_id == outcomes.c.request_id).outerjoin(
                by_session,
                (by_session.c.session_id == outcomes.c.session_id)
                & by_session.c.api_key_id.is_not_distinct_from(outcomes.c.api_key_id),
            )
        )
        .where(*kept, or_(outcomes.c.endpoint.is_(None), outcomes.c.endpoint.not_in(("embedding", "rerank", "moderation", "mcp"))),
               outcomes.c.cache_hit.is_not(True))
        .order_by(outcomes.c.created_at, outcomes.c.request_id)
    )


def iter_training_rows(
    engine: Engine, since: datetime | None = None, metric: str | None = None, route_group: str | None = None
) -> Iterator[dict[str, Any]]:
    """Export rows in EXPORT_SCHEMA order, streamed from the database."""
    with engine.connect() as connection:
        query = export_query(since, metric, route_group)
        result = connection.execution_options(yield_per=CHUNK_ROWS).execute(query)
        for record in result.mappings():
            request_quality, session_quality = record["request_quality"], record["session_quality"]
            quality, source = (
                (request_quality, "request")
                if request_quality is not None
                else (session_quality, "session")
                if session_quality is not None
                else (None, None)
            )
            row = {name: record[name] for name in OUTCOME_FIELDS}
            row["prompt"] = prompt_text(record["prompt"])
            row["messages"] = record["prompt"]
            row["quality"] = None if quality is None else float(quality)
            row["quality_source"] = source
            yield {name: row[name] for name in EXPORT_SCHEMA.names}


def export_outcomes(
    url: str | URL | Engine,
    out_path: str | Path,
    format: ExportFormat = "jsonl",
    since: datetime | None = None,
    metric: str | None = None,
    route_group: str | None = None,
) -> int:
    """Write the training set to `out_path` (JSON lines or Parquet); returns the number of rows.

    `metric` restricts the feedback averaged into `quality` to one metric name; `since` and
    `route_group` keep the requests logged from a time on, and one route group's.
    """
    engine = as_engine(url)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        rows = iter_training_rows(engine, since, metric, route_group)
        if format == "jsonl":
            return _write_jsonl(rows, out_path)
        if format == "parquet":
            return _write_parquet(rows, out_path)
        raise ValueError(f"unknown export format {format!r}; use 'jsonl' or 'parquet'")
    finally:
        if engine is not url:
            engine.dispose()


def _write_jsonl(rows: Iterator[dict[str, Any]], out_path: Path) -> int:
    count = 0
    with out_path.open("w", encoding="utf-8") as f:
        for row in rows:
            row["created_at"] = row["created_at"].isoformat()
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_parquet(rows: Iterator[dict[str, Any]], out_path: Path) -> int:
    count = 0
    with pq.ParquetWriter(out_path, EXPORT_SCHEMA) as writer:
        chunk: list[dict[str, Any]] = []
        for row in rows:
            if row["messages"] is not None:
                row["messages"] = json.dumps(row["messages"], ensure_ascii=False)
            chunk.append(row)
            if len(chunk) == CHUNK_ROWS:
                writer.write_table(pa.Table.from_pylist(chunk, schema=EXPORT_SCHEMA))
                count += len(chunk)
                chunk = []
        if chunk or count == 0:
            writer.write_table(pa.Table.from_pylist(chunk, schema=EXPORT_SCHEMA))
            count += len(chunk)
    return count
