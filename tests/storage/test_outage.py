"""A database outage in the middle of traffic: every accepted row arrives exactly once.

Runs its own throwaway PostgreSQL cluster, kills it (`pg_ctl stop -m immediate`) while rows keep
coming, lets the memory buffer overflow into the disk spool, restarts it and checks the table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Outcome
from storage.outcome_writer import OutcomeWriter

from .helpers import outcome_row
from .pg_cluster import ThrowawayPostgres


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class Traffic:
    """Submits rows from a thread, as the gateway's request path would, until stopped."""

    def __init__(self, writer: OutcomeWriter) -> None:
        self.writer = writer
        self.submitted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(10):
                self.writer.submit(outcome_row(self.submitted))
                self.submitted += 1
            time.sleep(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.submitted


def test_outage_mid_traffic_loses_and_duplicates_nothing(cluster: ThrowawayPostgres, tmp_path: Path) -> None:
    upgrade(cluster.url)
    spool = tmp_path / "outcomes.spool.jsonl"
    writer = OutcomeWriter(
        cluster.url,
        batch_size=100,
        flush_interval_s=0.05,
        max_buffer=300,
        spool_path=spool,
        max_backoff_s=0.3,
    )
    traffic = Traffic(writer)
    wait_until(lambda: writer.stats().written >= 500)

    cluster.stop("immediate")
    wait_until(lambda: writer.stats().retries >= 3 and writer.stats().spooled >= 500)
    during = writer.stats()
    assert during.buffered <= 300 and during.last_error

    cluster.start()
    wait_until(lambda: writer.stats().written >= during.written + 1_000)
    total = traffic.stop()
    assert writer.close(timeout=30)

    engine = create_engine(cluster.url)
    with engine.connect() as connection:
        ids = list(connection.scalars(sa.select(Outcome.request_id)))
    engine.dispose()
    assert len(ids) == total == len(set(ids))
    assert set(ids) == {f"req-{i:06d}" for i in range(total)}
    final = writer.stats()
    assert final.rejected == 0 and final.dropped == 0 and final.spool_pending == 0
    assert not spool.exists()
