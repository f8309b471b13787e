"""The batched writer: batching, flush on close, idempotency, bad rows, spool and replay."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import Feedback
from storage.outcome_writer import FeedbackWriter, OutcomeWriter

from .helpers import outcome_ids, outcome_row


class HeldOutcomeWriter(OutcomeWriter):
    """Its database writes wait for `release`, so a test can see what submit does while one is stuck."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.release = threading.Event()
        self.inserting = threading.Event()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _insert_rows(self, rows: list[dict[str, object]]) -> None:
        self.inserting.set()
        assert self.release.wait(30), "the test never released the writer"
        super()._insert_rows(rows)


def test_writes_rows_in_batches_and_close_flushes_everything(db_url: str) -> None:
    writer = HeldOutcomeWriter(db_url, batch_size=300, flush_interval_s=0.05)
    submitted = threading.Event()

    def submit_all() -> None:
        for i in range(2_000):
            writer.submit(outcome_row(i))
        submitted.set()

    # The request path only appends to memory: every submit returns while the writer thread is stuck
    # inside a database write (no wall clock: a shared CI machine makes any time limit flaky).
    threading.Thread(target=submit_all, daemon=True).start()
    assert writer.inserting.wait(10), "the first full batch never reached the database"
    assert submitted.wait(10), "submit waited on the stuck database write"
    stats = writer.stats()
    assert stats.written == 0 and stats.buffered == 2_000
    writer.release.set()
    assert writer.close(timeout=30)
    ids = outcome_ids(db_url)
    assert len(ids) == 2_000 and set(ids) == {f"req-{i:06d}" for i in range(2_000)}
    stats = writer.stats()
    assert stats.written == 2_000 and stats.buffered == 0 and stats.retries == 0 and stats.rejected == 0


def test_flush_interval_writes_a_partial_batch(db_url: str) -> None:
    with OutcomeWriter(db_url, batch_size=500, flush_interval_s=0.05) as writer:
        writer.submit(outcome_row(1))
        deadline = time.monotonic() + 5
        while writer.stats().written < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outcome_ids(db_url) == ["req-000001"]


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    assert condition(), "the writer never got there"  # type: ignore[operator]


def test_rows_arriving_during_a_write_wait_for_the_interval_unless_they_fill_a_batch(db_url: str) -> None:
    """Steady load must not become a transaction per handful of rows: what came in while a batch was
    being written waits for the next interval (here far off), unless it fills a batch or a flush asks."""
    writer = HeldOutcomeWriter(db_url, batch_size=3, flush_interval_s=60)
    inserts = 0
    insert_rows = writer._insert_rows

    def counted(rows: list[dict[str, object]]) -> None:
        nonlocal inserts
        inserts += 1
        insert_rows(rows)

    writer._insert_rows = counted  # type: ignore[method-assign]
    for i in range(3):
        writer.submit(outcome_row(i))  # a full batch wakes the writer at once
    assert writer.inserting.wait(10)
    writer.submit(outcome_row(3))
    writer.submit(outcome_row(4))
    writer.release.set()
    _wait_for(lambda: writer.stats().written == 3)
    time.sleep(0.3)  # room for the writer to (wrongly) go on with the two rows left
    assert inserts == 1 and writer.stats().buffered == 2
    writer.submit(outcome_row(5))  # fills the batch: written without waiting for the interval
    _wait_for(lambda: writer.stats().written == 6)
    writer.submit(outcome_row(6))
    assert writer.flush(timeout=10) and inserts == 3
    assert writer.close(timeout=10)
    assert len(outcome_ids(db_url)) == 7


def test_resubmitted_rows_are_skipped_not_duplicated(db_url: str) -> None:
    with OutcomeWriter(db_url, batch_size=10, flush_interval_s=0.05) as writer:
        for i in range(25):
            writer.submit(outcome_row(i))
        assert writer.flush(timeout=10)
        for i in range(20, 30):  # an overlapping retry of the last batch
            writer.submit(outcome_row(i))
        assert writer.flush(timeout=10)
        assert writer.stats().rejected == 0
    assert sorted(outcome_ids(db_url)) == [f"req-{i:06d}" for i in range(30)]


def test_invalid_rows_are_refused_at_submit(db_url: str) -> None:
    with OutcomeWriter(db_url) as writer:
        with pytest.raises(ValueError, match="unknown fields"):
            writer.submit({"request_id": "x", "no_such_column": 1})
        with pytest.raises(ValueError, match="request_id"):
            writer.submit({"model": "small"})
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(outcome_row(1))


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_written(
    db_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "outcomes.spool.jsonl"
    with OutcomeWriter(db_url, batch_size=50, flush_interval_s=0.05, spool_path=spool) as writer:
        for i in range(10):
            writer.submit(outcome_row(i, turn="not a number" if i == 3 else i))
        assert writer.flush(timeout=10)
        assert writer.stats().rejected == (1 if db_url.startswith("postgresql") else 0)
    ids = outcome_ids(db_url)
    if db_url.startswith("postgresql"):  # SQLite's dynamic typing accepts the text
        assert len(ids) == 9 and "req-000003" not in ids
        dead = [json.loads(line) for line in spool.with_suffix(".rejected.jsonl").read_text().splitlines()]
        assert dead[0]["row"]["request_id"] == "req-000003" and dead[0]["error"]
    else:
        assert len(ids) == 10


def test_feedback_writer_generates_ids(db_url: str) -> None:
    with FeedbackWriter(db_url, flush_interval_s=0.05) as writer:
        writer.submit({"request_id": "req-1", "metric": "thumbs", "value": 1.0})
        writer.submit(
            {"session_id": "sess-1", "metric": "task_success", "value": 0.0, "extra": {"by": "judge"}}
        )
    engine = create_engine(db_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(Feedback.id, Feedback.metric, Feedback.created_at)).all()
    engine.dispose()
    assert len(rows) == 2 and all(len(row.id) == 32 for row in rows)
    assert all(row.created_at.tzinfo is not None for row in rows)


def test_close_spools_what_an_unready_database_cannot_take_and_next_writer_replays(
    empty_url: str, tmp_path: Path
) -> None:
    spool = tmp_path / "spool" / "outcomes.jsonl"
    writer = OutcomeWriter(empty_url, batch_size=20, flush_interval_s=0.02, max_buffer=50, spool_path=spool)
    for i in range(120):  # not migrated yet: a missing table is retried, not a reason to reject rows
        writer.submit(outcome_row(i))
    assert not writer.close(timeout=0.5)
    stats = writer.stats()
    assert stats.retries > 0 and stats.spooled == 120 and stats.rejected == 0
    assert "outcomes" in (stats.last_error or "")

    upgrade(empty_url)
    with OutcomeWriter(empty_url, batch_size=20, flush_interval_s=0.02, spool_path=spool) as replayer:
        assert replayer.stats().spool_pending == 120
        assert replayer.flush(timeout=10)
    assert sorted(outcome_ids(empty_url)) == [f"req-{i:06d}" for i in range(120)]
    assert not spool.exists() and not spool.with_name(spool.name + ".replaying").exists()


def test_without_a_spool_a_full_buffer_drops_and_counts(sqlite_url: str) -> None:
    writer = OutcomeWriter(sqlite_url, batch_size=10, flush_interval_s=0.02, max_buffer=30)
    for i in range(50):
        writer.submit(outcome_row(i))
    assert not writer.close(timeout=0.2)
    assert writer.stats().dropped == 50  # 20 at submit, 30 left in memory at close


def test_concurrent_submitters_with_overflow_lose_nothing(sqlite_url: str, tmp_path: Path) -> None:
    upgrade(sqlite_url)
    writer = OutcomeWriter(
        sqlite_url, batch_size=64, flush_interval_s=0.01, max_buffer=100, spool_path=tmp_path / "spool.jsonl"
    )

    def submit_range(start: int) -> None:
        for i in range(start, start + 1_500):
            writer.submit(outcome_row(i))

    threads = [threading.Thread(target=submit_range, args=(n * 1_500,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.close(timeout=30)
    ids = outcome_ids(sqlite_url)
    assert len(ids) == 6_000 == len(set(ids))
    stats = writer.stats()
    assert stats.written == 6_000 and stats.spooled > 0  # the small buffer did overflow to disk
