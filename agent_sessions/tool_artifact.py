"""The tool-duration model as an artifact: a JSON file with a version, where its data came from and a
few numbers about it. Refitted from the outcome log: every returning turn's row carries the gap it
closed (`extra.tool_wait_s`), the tools it answered (`extra.tools`) and the agent (`extra.agent`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa

from agent_sessions.durations import ALL, ToolDurationEstimator

log = logging.getLogger("pitstop.sessions")
VERSION = 1


def load_estimator(path: str | Path | None) -> ToolDurationEstimator:
    """The fitted estimator, or the cold-start prior (logged) when there is no usable file."""
    if path is None or not Path(path).exists():
        log.info("no tool-duration artifact at %s: TTLs start from the prior and learn online", path)
        return ToolDurationEstimator()
    try:
        data = json.loads(Path(path).read_text())
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        return ToolDurationEstimator.from_dict(data["estimator"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("tool-duration artifact %s is unusable (%s): using the prior", path, exc)
        return ToolDurationEstimator()


def save_estimator(estimator: ToolDurationEstimator, path: str | Path, source: str) -> dict:
    samples = estimator.samples.get(ALL, ())
    metrics = {"observations": len(samples), "tool_keys": sorted(k for k in estimator.samples if k != ALL),
               "median_s": sorted(samples)[len(samples) // 2] if samples else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": VERSION, "created": time.time(), "source": source, "metrics": metrics,
            "estimator": estimator.to_dict()}
    path.write_text(json.dumps(data))
    return metrics


def observations_from_rows(rows: Iterable[dict]) -> Iterable[tuple[list[str], float, str | None]]:
    for row in rows:
        extra = row.get("extra") or {}
        wait = extra.get("tool_wait_s")
        if isinstance(wait, int | float) and wait >= 0:
            tools = [t for t in extra.get("tools") or () if isinstance(t, str)]
            agent = extra.get("agent") if isinstance(extra.get("agent"), str) else None
            yield tools, float(wait), agent


def fit_from_outcomes(url: str, max_rows: int = 200_000) -> tuple[ToolDurationEstimator, int]:
    """Reads the newest `max_rows` session rows (oldest first, so recent behaviour ends up kept)."""
    from storage.db import create_engine
    from storage.models import Outcome

    table = Outcome.__table__
    query = (sa.select(table.c.extra, table.c.created_at).where(table.c.session_id.is_not(None))
             .order_by(table.c.created_at.desc()).limit(max_rows))
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(query).mappings()][::-1]
    finally:
        engine.dispose()
    estimator = ToolDurationEstimator()
    count = 0
    for tools, wait, agent in observations_from_rows(rows):
        estimator.observe(tools, wait, agent)
        count += 1
    return estimator, count
