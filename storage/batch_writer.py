"""A batched, idempotent, outage-tolerant writer of rows into one table, off the request path.

`submit` only appends to an in-memory deque (the asyncio request path never waits on the database).
A writer thread drains it with Core executemany inserts that skip rows already present, so a batch
re-sent after an ambiguous failure never duplicates. While the database is down the thread retries
with capped exponential backoff; rows beyond `max_buffer` go to an on-disk spool (written by a second
thread) that is replayed once the database is back, and survives a restart of the process.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine

from storage.db import as_engine
from storage.inserts import UPSERT_DIALECTS, describe, idempotent_insert, is_transient
from storage.rows import RowShape
from storage.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterStats:
    written: int  # rows committed (a chunk re-sent after a crash mid-replay counts again)
    buffered: int  # rows in memory now
    spooled: int  # rows ever sent to the disk spool
    spool_pending: int  # rows on disk not yet in the database
    retries: int  # failed attempts that will be retried
    rejected: int  # rows the database refused for good (bad data); kept in the dead-letter file
    dropped: int  # rows lost: buffer full and no spool configured
    last_error: str | None


class Backoff:
    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)  # jitter: replicas don't retry in lockstep

    def reset(self) -> None:
        self.failures = 0


class BatchWriter:
    """Writes rows into `table` in batches from a background thread; see the module docstring."""

    table: ClassVar[Table | None] = None

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        table: Table | None = None,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        max_buffer: int = 50_000,
        spool_path: Path | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        table = table if table is not None else type(self).table
        assert table is not None, "pass table= or use a subclass that sets it"
        assert batch_size > 0 and max_buffer > 0
        self._owns_engine = not isinstance(url_or_engine, Engine)
        self._engine = as_engine(url_or_engine)
        self._shape = RowShape(table)
        self._insert = idempotent_insert(table, self._engine.dialect.name)
        self._skips_duplicates = self._engine.dialect.name in UPSERT_DIALECTS
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_buffer = max_buffer
        self._backoff = Backoff(initial_s=0.05, max_s=max_backoff_s)
        self._spool = Spool(Path(spool_path)) if spool_path is not None else None
        self._dead_letter_path = Path(spool_path).with_suffix(".rejected.jsonl") if spool_path else None

        self._cond = threading.Condition()
        self._buffer: deque[dict[str, Any]] = deque()
        self._overflow: deque[dict[str, Any]] = deque()  # waiting for the spooler thread
        self._overflow_ready = threading.Event()
        self._spooling = 0
        self._flush_waiters = 0
        self._closed = False
        self._stopping = False
        self._failing = False
        self._written = self._spooled = self._retries = self._rejected = self._dropped = 0
        self._last_error: str | None = None

        name = f"pitstop-{table.name}"
        self._writer = threading.Thread(target=self._run_writer, name=f"{name}-writer", daemon=True)
        self._writer.start()
        self._spooler: threading.Thread | None = None
        if self._spool is not None:
            self._spooler = threading.Thread(target=self._run_spooler, name=f"{name}-spooler", daemon=True)
            self._spooler.start()

    # ---- request path -------------------------------------------------------------------------

    def submit(self, row: Mapping[str, Any]) -> None:
        """Accept one row; never blocks on I/O. Raises ValueError for unknown or missing required fields."""
        full = self._shape.complete(row)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._shape.table.name} writer is closed")
            if len(self._buffer) < self._max_buffer:
                self._buffer.append(full)
                if len(self._buffer) >= self._batch_size:
                    self._cond.notify_all()
                return
            if self._spool is not None:
                self._overflow.append(full)
                self._overflow_ready.set()
                return
            self._dropped += 1
            first_drop = self._dropped == 1
        if first_drop:
            log.error("%s writer: buffer full and no spool configured; dropping rows", self._shape.table.name)

    # ---- control ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted row is in the database; False if `timeout` passed first."""
        with self._cond:
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._pending() == 0, timeout)
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop accepting rows, flush, stop the threads. Rows the database could not take in time
        are written to the spool (when configured) for the next process to replay."""
        with self._cond:
            already_closed = self._closed
            self._closed = True
        if already_closed:
            return self.flush(0)
        flushed = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._overflow_ready.set()
        for thread in (self._writer, self._spooler):
            if thread is not None:
                thread.join(timeout=None if flushed else 5.0)
        if not flushed:
            self._persist_leftovers()
        if self._owns_engine:
            self._engine.dispose()
        return flushed

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(
                written=self._written,
                buffered=len(self._buffer),
                spooled=self._spooled,
                spool_pending=self._spool.pending if self._spool else 0,
                retries=self._retries,
                rejected=self._rejected,
                dropped=self._dropped,
                last_error=self._last_error,
            )

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- writer thread ------------------------------------------------------------------------

    def _pending(self) -> int:
        on_disk = self._spool.pending if self._spool else 0
        return len(self._buffer) + len(self._overflow) + self._spooling + on_disk

    def _should_wake(self) -> bool:
        drainable = len(self._buffer) + (self._spool.pending if self._spool else 0)
        return (
            self._stopping or len(self._buffer) >= self._batch_size or bool(self._flush_waiters and drainable)
        )

    def _run_writer(self) -> None:
        retry_delay: float | None = None
        while True:
            with self._cond:
                if retry_delay is not None:
                    self._cond.wait_for(lambda: self._stopping, timeout=retry_delay)
                else:
                    self._cond.wait_for(self._should_wake, timeout=self._flush_interval_s)
                if self._stopping:
                    return
            try:
                drained = self._drain()
            except Exception:  # e.g. the spool file vanished: keep the thread alive and retry
                log.exception("%s writer: unexpected error while draining", self._shape.table.name)
                drained = False
            if drained:
                self._backoff.reset()
                retry_delay = None
            else:
                retry_delay = self._backoff.next_delay()

    def _drain(self) -> bool:
        """Write everything drainable, alternating memory batches and spool chunks; False on an outage."""
        while True:
            with self._cond:
                batch = list(islice(self._buffer, self._batch_size))
            if batch:
                if not self._write(batch):
                    return False
                with self._cond:
                    for _ in batch:
                        self._buffer.popleft()  # only this thread pops, so these are the rows written
            chunk = self._spool.read_chunk(self._batch_size) if self._spool and self._spool.pending else []
            if chunk:
                if not self._write(self._decode(chunk)):
                    return False
                assert self._spool is not None
                self._spool.commit_chunk()
            if not batch and not chunk:
                return True
            with self._cond:
                self._cond.notify_all()
                # What came in while this batch was written waits for the next interval unless it fills a
                # batch or someone waits: writing it at once turns steady load into many tiny transactions.
                if not chunk and not self._should_wake():
                    return True

    def _decode(self, lines: list[str]) -> list[dict[str, Any]]:
        rows = []
        for line in lines:
            try:
                rows.append(self._shape.from_json(line))
            except ValueError as error:  # a torn last line after a crash, or a row from an older schema
                self._reject({"raw": line}, error)
        return rows

    def _write(self, rows: list[dict[str, Any]]) -> bool:
        """Insert rows; True when each is in the database or rejected for good, False to retry later."""
        if not rows:
            return True
        try:
            self._insert_rows(rows)
        except Exception as error:
            if is_transient(error):
                self._note_failure(error)
                return False
            log.warning("%s batch refused (%s); retrying row by row", self._shape.table.name, describe(error))
            if not self._write_one_by_one(rows):
                return False
        else:
            with self._cond:
                self._written += len(rows)
        if self._failing:
            self._failing = False
            log.info("%s writer: database reachable again", self._shape.table.name)
        return True

    def _write_one_by_one(self, rows: list[dict[str, Any]]) -> bool:
        for row in rows:
            try:
                self._insert_rows([row])
            except Exception as error:
                if is_transient(error):
                    self._note_failure(error)
                    return False
                if isinstance(error, sa_exc.IntegrityError) and not self._skips_duplicates:
                    continue  # already written by an earlier attempt
                self._reject(row, error)
            else:
                with self._cond:
                    self._written += 1
        return True

    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            connection.execute(self._insert, rows)

    def _note_failure(self, error: BaseException) -> None:
        with self._cond:
            self._retries += 1
            self._last_error = describe(error)
        if not self._failing:
            self._failing = True
            log.warning(
                "%s writer: database unavailable, buffering (%s)", self._shape.table.name, describe(error)
            )

    def _reject(self, row: Mapping[str, Any], error: BaseException) -> None:
        message = describe(error)
        with self._cond:
            self._rejected += 1
            self._last_error = message
        log.error("%s writer: row rejected for good: %s", self._shape.table.name, message)
        if self._dead_letter_path is None:
            return
        try:
            line = json.dumps({"error": message, "row": json.loads(self._shape.to_json(row))})
            with self._dead_letter_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except (OSError, ValueError) as write_error:
            log.error("%s writer: cannot write dead letter: %s", self._shape.table.name, write_error)

    # ---- spooler thread -----------------------------------------------------------------------

    def _run_spooler(self) -> None:
        assert self._spool is not None
        while True:
            self._overflow_ready.wait()
            with self._cond:
                self._overflow_ready.clear()
                rows = list(self._overflow)
                self._overflow.clear()
                self._spooling = len(rows)
                stopping = self._stopping
            if rows:
                self._spool_rows(rows)
            with self._cond:
                self._spooling = 0
                self._cond.notify_all()
            if stopping:
                return

    def _spool_rows(self, rows: list[dict[str, Any]]) -> bool:
        assert self._spool is not None
        try:
            self._spool.append([self._shape.to_json(row) for row in rows])
        except (OSError, ValueError, TypeError) as error:  # disk full, unwritable, or rows that can't be JSON
            with self._cond:
                self._dropped += len(rows)
                self._last_error = f"spool: {describe(error)}"
            log.error("%s writer: cannot spool %d rows: %s", self._shape.table.name, len(rows), error)
            return False
        with self._cond:
            self._spooled += len(rows)
        return True

    def _persist_leftovers(self) -> None:
        with self._cond:
            rows = list(self._buffer) + list(self._overflow)
        if not rows:
            return
        if self._spool is None:
            with self._cond:
                self._dropped += len(rows)
            log.error(
                "%s writer: closing with %d unwritten rows and no spool", self._shape.table.name, len(rows)
            )
            return
        if self._spool_rows(rows):
            log.warning("%s writer: %d unwritten rows spooled for replay", self._shape.table.name, len(rows))
        if not self._writer.is_alive():  # else a late success of the writer still pops its batch
            with self._cond:
                self._buffer.clear()
                self._overflow.clear()
