"""`storage.retention_days`: the gateway deletes outcome rows and feedback older than that, at its start
and every hour after, in a thread, a batch at a time (storage/retention.py). Every replica sweeps; the
deletes are idempotent, and a replica finding nothing old costs one indexed query."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.engine import Engine

from gateway.periodic import Periodic
from storage.models import utc_now
from storage.retention import delete_before

log = logging.getLogger("pitstop.retention")
SWEEP_INTERVAL_S = 3600.0


class OutcomeRetention:
    def __init__(self, engine: Engine, retention_days: float, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self.engine = engine
        self.kept = timedelta(days=retention_days)
        self._sweeper = Periodic(self.sweep_once, interval_s, "deleting outcome rows past their retention")

    def start(self) -> None:
        self._sweeper.start()

    async def sweep_once(self) -> dict[str, int]:
        deleted = await asyncio.to_thread(delete_before, self.engine, utc_now() - self.kept)
        if any(deleted.values()):
            log.info("deleted %d outcome rows and %d feedback rows older than %s", deleted["outcomes"],
                     deleted["feedback"], self.kept)
        return deleted

    async def close(self) -> None:
        await self._sweeper.close()
