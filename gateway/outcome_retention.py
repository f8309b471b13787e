"""Retention sweeps: the gateway deletes outcome rows and feedback older than `storage.retention_days`, and
admin audit events older than `storage.audit_retention_days`, at its start and every hour after, in a
thread, a batch at a time (storage/retention.py). Every replica sweeps; the deletes are idempotent, and a
replica finding nothing old costs one indexed query a table."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.engine import Engine

from gateway.periodic import Periodic
from storage.models import utc_now
from storage.retention import delete_audit_before, delete_before

log = logging.getLogger("pitstop.retention")
SWEEP_INTERVAL_S = 3600.0


class OutcomeRetention:
    """Either horizon may be None: that table is kept whole."""

    def __init__(self, engine: Engine, retention_days: float | None, audit_days: float | None = None,
                 interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.engine = engine
        self.kept = timedelta(days=retention_days) if retention_days else None
        self.audit_kept = timedelta(days=audit_days) if audit_days else None
        self._sweeper = Periodic(self.sweep_once, interval_s, "deleting rows past their retention")

    def start(self) -> None:
        self._sweeper.start()

    async def sweep_once(self) -> dict[str, int]:
        return await asyncio.to_thread(self._sweep)

    def _sweep(self) -> dict[str, int]:
        deleted: dict[str, int] = {}
        if self.kept is not None:
            deleted = delete_before(self.engine, utc_now() - self.kept)
            if any(deleted.values()):
                log.info("deleted %d outcome rows and %d feedback rows older than %s", deleted["outcomes"],
                         deleted["feedback"], self.kept)
        if self.audit_kept is not None:
            deleted["audit_events"] = delete_audit_before(self.engine, utc_now() - self.audit_kept)
            if deleted["audit_events"]:
                log.info("deleted %d audit events older than %s", deleted["audit_events"], self.audit_kept)
        return deleted

    async def close(self) -> None:
        await self._sweeper.close()
