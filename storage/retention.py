"""Outcome retention: outcome rows and feedback older than `storage.retention_days` deleted, a batch at a
time, oldest first. Every request leaves a row (with its prompt and answer where `store_text`), so
without it the log grows by the traffic: 8.6 million rows a day at 100 requests a second.

Each batch is its own short transaction on the `created_at` index, with a pause after it, so the batch
writer's inserts never wait behind one long delete (on SQLite, whose one write lock they share); a batch takes the oldest rows, so a sweep cut short (the
gateway stopping) has still deleted from the oldest end. Spend lives on the keys (`api_keys.spent_usd`),
so budgets do not depend on the rows kept. Usage by minute (storage/usage.py) goes with the rows; usage by
hour stays, a few lines an hour, so `GET /v1/organization/costs` still answers for months already pruned.

The admin audit log has its own horizon (`storage.audit_retention_days`, unset: kept for good), as audit
trails are usually kept longer than traffic logs, and never by accident of the outcome setting."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import ColumnElement, Table, delete, select
from sqlalchemy.engine import Engine

from storage.models import AuditLog, Feedback, Outcome, UsageRollup, VideoJob
from storage.usage import MINUTE
from storage.videos import RUNNING

BATCH_ROWS = 5_000
# Between batches: SQLite has one write lock, and a writer waiting for it retries on its own schedule
# (up to 100 ms apart), so a sweep that takes the lock straight back would keep it out for the whole sweep.
PAUSE_S = 0.05


def delete_before(engine: Engine, cutoff: datetime, batch_rows: int = BATCH_ROWS,
                  pause_s: float = PAUSE_S) -> dict[str, int]:
    """Delete outcomes, feedback and usage by minute from before `cutoff`; how many of each went."""
    deleted = {}
    for name, table, key in (("outcomes", Outcome.__table__, Outcome.__table__.c.request_id),
                             ("feedback", Feedback.__table__, Feedback.__table__.c.id)):
        deleted[name] = _delete_oldest(engine, table, key, table.c.created_at, table.c.created_at < cutoff,
                                       batch_rows, pause_s)
    rollup = UsageRollup.__table__
    with engine.begin() as connection:  # a few thousand lines a day: one statement
        deleted["usage_minutes"] = connection.execute(delete(rollup).where(
            rollup.c.width_s == MINUTE, rollup.c.bucket < int(cutoff.timestamp()))).rowcount
    return deleted


def delete_audit_before(engine: Engine, cutoff: datetime, batch_rows: int = BATCH_ROWS,
                        pause_s: float = PAUSE_S) -> int:
    """Delete the audit events that took effect before `cutoff`; how many went."""
    table: Table = AuditLog.__table__  # type: ignore[assignment]
    return _delete_oldest(engine, table, table.c.seq, table.c.effective_at,
                          table.c.effective_at < int(cutoff.timestamp()), batch_rows, pause_s)


def delete_videos_before(engine: Engine, cutoff: datetime, batch_rows: int = BATCH_ROWS,
                         pause_s: float = PAUSE_S) -> int:
    """Delete the ended video jobs created before `cutoff`; how many went. Few rows (each a paid job), so
    no index of their own: the age order scans the table."""
    table: Table = VideoJob.__table__  # type: ignore[assignment]
    ended_and_old = (table.c.created_at < cutoff) & table.c.status.not_in(RUNNING)
    return _delete_oldest(engine, table, table.c.id, table.c.created_at, ended_and_old, batch_rows, pause_s)


def _delete_oldest(engine: Engine, table: Table, key: ColumnElement, age: ColumnElement,
                   old: ColumnElement[bool], batch_rows: int, pause_s: float) -> int:
    """Delete the rows matching `old`, `batch_rows` of the oldest (by `age`, an indexed column) at a time."""
    oldest = select(key).where(old).order_by(age).limit(batch_rows)
    total = 0
    while True:
        with engine.begin() as connection:
            # A subquery, not a list of ids: one round trip a batch, on SQLite and PostgreSQL alike.
            count = connection.execute(delete(table).where(key.in_(oldest.scalar_subquery()))).rowcount
        total += count
        if count < batch_rows:
            return total
        time.sleep(pause_s)
