"""Retention sweeps: the gateway deletes outcome rows and feedback older than `storage.retention_days`, and
admin audit events older than `storage.audit_retention_days`, and ended video jobs' rows older than
`storage.video_retention_days`, at its start and every hour after, in a
thread, a batch at a time (storage/retention.py). Every replica sweeps; the deletes are idempotent, and a
replica finding nothing old costs one indexed query a table."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.engine import Engine

from gateway.periodic import Periodic
from gateway.section_config import StorageConfig
from storage.models import utc_now
from storage.retention import delete_audit_before, delete_before, delete_videos_before

log = logging.getLogger("pitstop.retention")
SWEEP_INTERVAL_S = 3600.0


class OutcomeRetention:
    """Any horizon may be None: that table is kept whole."""

    def __init__(self, engine: Engine, retention_days: float | None, audit_days: float | None = None,
                 interval_s: float = SWEEP_INTERVAL_S, video_days: float | None = None) -> None:
        self.engine = engine
        self.kept = timedelta(days=retention_days) if retention_days else None
        self.audit_kept = timedelta(days=audit_days) if audit_days else None
        self.video_kept = timedelta(days=video_days) if video_days else None
        self._sweeper = Periodic(self.sweep_once, interval_s, "deleting rows past their retention")

    @classmethod
    def configured(cls, engine: Engine, storage: StorageConfig) -> OutcomeRetention | None:
        """The sweep the storage section asks for; None where it sets no horizon."""
        horizons = (storage.retention_days, storage.audit_retention_days, storage.video_retention_days)
        if not any(horizons):
            return None
        return cls(engine, storage.retention_days, storage.audit_retention_days,
                   video_days=storage.video_retention_days)

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
        if self.video_kept is not None:
            deleted["video_jobs"] = delete_videos_before(self.engine, utc_now() - self.video_kept)
            if deleted["video_jobs"]:
                log.info("deleted %d ended video jobs older than %s", deleted["video_jobs"], self.video_kept)
        return deleted

    async def close(self) -> None:
        await self._sweeper.close()
