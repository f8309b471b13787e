"""Retention on SQLite and PostgreSQL: outcome rows and feedback, and (on their own horizon) admin audit
events, and (on a third) ended video jobs, older than the cutoff deleted a batch at a time, oldest first, the
rest kept (a video job still running always); the CLI and the gateway's sweep at start do the same, and no
setting reaches another's table."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from gateway.outcome_retention import OutcomeRetention
from storage.db import create_engine, session_factory
from storage.models import AuditLog, Feedback, Outcome, UsageRollup, VideoJob, utc_now
from storage.retention import delete_audit_before, delete_before, delete_videos_before
from storage.usage import record_usage
from storage.videos import VideoStore


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


ACTOR = {"type": "session", "session": {"user": {"id": "cli:test"}}}


def seed_audit(url: str, now: object) -> None:
    """Audit events e0..e9, event i in effect i days before `now`."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for i in range(10):
            effective = int((now - timedelta(days=i, minutes=1)).timestamp())  # type: ignore[operator]
            connection.execute(sa.insert(AuditLog).values(type="api_key.created", effective_at=effective,
                                                          actor=ACTOR, resource_id=f"e{i}", payload={}))
    engine.dispose()


def audit_kept(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        ids = sorted(connection.execute(sa.select(AuditLog.__table__.c.resource_id)).scalars())
    engine.dispose()
    return ids


def test_audit_events_past_their_own_cutoff_go_a_batch_at_a_time(db_url: str) -> None:
    now = utc_now()
    seed_audit(db_url, now)
    seed(db_url, now)
    engine = create_engine(db_url)
    try:
        assert delete_audit_before(engine, now - timedelta(days=3.5), batch_rows=2) == 6
        assert audit_kept(db_url) == ["e0", "e1", "e2", "e3"]
        assert delete_audit_before(engine, now - timedelta(days=3.5), batch_rows=2) == 0
        assert len(kept(db_url)[0]) == 10  # the outcome log is not the audit log's to prune
        delete_before(engine, now - timedelta(days=1.5))
        assert audit_kept(db_url) == ["e0", "e1", "e2", "e3"]  # nor the other way round
    finally:
        engine.dispose()


def test_the_audit_cli_and_a_gateway_with_audit_retention_days(tmp_path: Path, db_url: str) -> None:
    from tests.gateway.harness import run_cli, running_gateway, wait_until, write_config

    now = utc_now()
    seed_audit(db_url, now)
    seed(db_url, now)
    models = [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}}]
    config = write_config(tmp_path / "pitstop.yaml", {"model_list": models, "storage": {"url": db_url}})
    pruned = run_cli("prune", "audit", "--config", str(config), "--older-than-days", "7.5")
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 2 audit events" in pruned.stdout
    assert audit_kept(db_url) == [f"e{i}" for i in range(8)]

    raw = {"model_list": models, "storage": {"url": db_url, "spool_path": None, "audit_retention_days": 2.5}}
    with running_gateway(raw):
        wait_until(lambda: audit_kept(db_url) == ["e0", "e1", "e2"], what="audit events older than 2.5 days deleted")
    assert len(kept(db_url)[0]) == 10  # no retention_days: every outcome row kept


def seed_videos(url: str, now: object) -> None:
    """Video jobs v0..v9, job i made i days before `now`: the odd ones still running, the even ones ended."""
    store = VideoStore(url)
    statuses = ["completed", "queued", "failed", "in_progress", "failed", "queued", "completed", "in_progress",
                "deleted", "queued"]
    for i, status in enumerate(statuses):
        store.put({"id": f"v{i}", "created_at": now - timedelta(days=i, minutes=1),  # type: ignore[operator]
                   "api_key_id": "k", "team_id": None, "deployment": "sora#0", "model": "sora", "seconds": 4,
                   "size": "720x1280", "status": status, "request_id": f"req-v{i}", "hold_usd": 0.4,
                   "hold_period": None, "video": {"id": f"v{i}", "status": status}})


def videos_kept(url: str) -> list[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        ids = sorted(connection.execute(sa.select(VideoJob.__table__.c.id)).scalars())
    engine.dispose()
    return ids


RUNNING_JOBS = ["v1", "v3", "v5", "v7", "v9"]


def test_ended_video_jobs_past_their_own_cutoff_go_running_ones_stay(db_url: str) -> None:
    now = utc_now()
    seed_videos(db_url, now)
    seed(db_url, now)
    seed_audit(db_url, now)
    engine = create_engine(db_url)
    try:  # ended and older than 3.5 days: v4 (failed), v6 (completed), v8 (deleted); v5, v7, v9 still run
        assert delete_videos_before(engine, now - timedelta(days=3.5), batch_rows=2) == 3
        assert videos_kept(db_url) == sorted(["v0", "v2", *RUNNING_JOBS])
        assert delete_videos_before(engine, now - timedelta(days=3.5), batch_rows=2) == 0
        assert len(kept(db_url)[0]) == 10 and len(audit_kept(db_url)) == 10  # not the video horizon's tables
        delete_before(engine, now - timedelta(days=0.5))
        delete_audit_before(engine, now - timedelta(days=0.5))
        assert len(videos_kept(db_url)) == 7  # nor the other way round
    finally:
        engine.dispose()


def test_the_videos_cli_and_a_gateway_with_video_retention_days_sweep_ended_jobs(tmp_path: Path, db_url: str) -> None:
    from tests.gateway.harness import run_cli_here, running_gateway, wait_until, write_config

    seed_videos(db_url, utc_now())
    seed(db_url, utc_now())
    models = [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}}]
    config = write_config(tmp_path / "pitstop.yaml", {"model_list": models, "storage": {"url": db_url}})
    pruned = run_cli_here("prune", "videos", "--config", str(config), "--older-than-days", "5.5")
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 2 ended video jobs" in pruned.stdout  # v6 (completed), v8 (deleted)
    raw = {"model_list": models, "storage": {"url": db_url, "spool_path": None, "video_retention_days": 1.5}}
    with running_gateway(raw):
        wait_until(lambda: videos_kept(db_url) == sorted(["v0", *RUNNING_JOBS]),
                   what="ended video jobs older than 1.5 days deleted")
    assert len(kept(db_url)[0]) == 10  # no retention_days: every outcome row kept
