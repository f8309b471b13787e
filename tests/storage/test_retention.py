"""Outcome retention on SQLite and PostgreSQL: rows and feedback older than the cutoff deleted a batch at a
time, oldest first, the rest kept; the CLI and the gateway's sweep at start do the same."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from gateway.outcome_retention import OutcomeRetention
from storage.db import create_engine, session_factory
from storage.models import Feedback, Outcome, UsageRollup, utc_now
from storage.retention import delete_before
from storage.usage import record_usage


def seed(url: str, now: object) -> None:
    """Outcomes 0..9 and their feedback, request i logged i days before `now`, and their usage sums."""
    engine = create_engine(url)
    with session_factory(engine).begin() as session:
        for i in range(10):
            created = now - timedelta(days=i, minutes=1)  # type: ignore[operator]
            session.add(Outcome(request_id=f"r{i}", created_at=created, model="m", status="ok"))
            session.add(Feedback(id=f"f{i}", created_at=created, request_id=f"r{i}", metric="thumbs", value=1.0))
            record_usage(session.connection(), [{"created_at": created, "model": "m", "status": "ok"}])
    engine.dispose()


def usage_lines(url: str) -> dict[int, int]:
    """Rollup lines by width: minutes go with the rows, hours stay."""
    engine = create_engine(url)
    with engine.connect() as connection:
        lines = connection.execute(sa.select(UsageRollup.width_s, sa.func.count()).group_by(UsageRollup.width_s))
        counted = {int(width): int(count) for width, count in lines}
    engine.dispose()
    return counted


def kept(url: str) -> tuple[list[str], list[str]]:
    engine = create_engine(url)
    with engine.connect() as connection:
        outcomes = sorted(connection.execute(sa.select(Outcome.__table__.c.request_id)).scalars())
        feedback = sorted(connection.execute(sa.select(Feedback.__table__.c.id)).scalars())
    engine.dispose()
    return outcomes, feedback


def test_rows_past_the_cutoff_go_a_batch_at_a_time(db_url: str) -> None:
    now = utc_now()
    seed(db_url, now)
    engine = create_engine(db_url)
    try:
        assert delete_before(engine, now - timedelta(days=3), batch_rows=2) == {
            "outcomes": 7, "feedback": 7, "usage_minutes": 7}
        assert kept(db_url) == (["r0", "r1", "r2"], ["f0", "f1", "f2"])
        assert usage_lines(db_url) == {60: 3, 3_600: 10}
        assert delete_before(engine, now - timedelta(days=3), batch_rows=2) == {
            "outcomes": 0, "feedback": 0, "usage_minutes": 0}
    finally:
        engine.dispose()


def test_the_cli_and_the_gateway_sweep_prune_as_configured(tmp_path: Path, db_url: str) -> None:
    import asyncio

    from tests.gateway.harness import run_cli, run_cli_here, write_config

    now = utc_now()
    seed(db_url, now)
    config = write_config(tmp_path / "pitstop.yaml", {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}}],
        "storage": {"url": db_url}})
    pruned = run_cli("prune", "outcomes", "--config", str(config), "--older-than-days", "7.5")
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 2 outcome rows and 2 feedback rows" in pruned.stdout
    assert run_cli_here("prune", "outcomes", "--config", str(config), "--older-than-days", "0").returncode == 2

    engine = create_engine(db_url)  # what storage.retention_days: 2.5 has the gateway do at its start
    try:
        deleted = asyncio.run(OutcomeRetention(engine, 2.5).sweep_once())
    finally:
        engine.dispose()
    assert deleted == {"outcomes": 5, "feedback": 5, "usage_minutes": 5}
    assert kept(db_url) == (["r0", "r1", "r2"], ["f0", "f1", "f2"])


def test_a_gateway_with_retention_days_sweeps_at_its_start(tmp_path: Path, db_url: str) -> None:
    from tests.gateway.harness import running_gateway, wait_until

    seed(db_url, utc_now())
    raw = {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m",
                                                                 "api_base": "http://127.0.0.1:9/v1"}}],
           "storage": {"url": db_url, "spool_path": None, "retention_days": 4.5}}
    with running_gateway(raw):
        wait_until(lambda: kept(db_url) == (["r0", "r1", "r2", "r3", "r4"], ["f0", "f1", "f2", "f3", "f4"]),
                   what="rows older than 4.5 days deleted")
