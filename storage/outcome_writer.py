"""The writers the gateway uses: one row per request into `outcomes`, quality signals into `feedback`.

Both are the same `BatchWriter` bound to a table, e.g.:

    writer = OutcomeWriter("sqlite:///var/pitstop.db", spool_path=Path("var/outcomes.spool.jsonl"))
    writer.submit({"request_id": rid, "model": "gpt-4o-mini", "cost_usd": 0.0004, ...})
    ...
    writer.close()  # at shutdown: flushes, or spools what the database could not take
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Table

from storage.batch_writer import BatchWriter, WriterStats
from storage.models import Feedback, Outcome
from storage.usage import record_usage

__all__ = ["BatchWriter", "FeedbackWriter", "OutcomeWriter", "WriterStats"]


class OutcomeWriter(BatchWriter):
    """Rows into `outcomes`, and in the same transaction their sums into `usage_rollup` (storage/usage.py):
    only the rows this insert wrote (RETURNING), so a batch written again after a lost commit, or a
    spooled row replayed, is not counted twice."""

    table: ClassVar[Table | None] = Outcome.__table__

    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            written = set(connection.execute(self._insert.returning(Outcome.request_id), rows).scalars())
            record_usage(connection, (row for row in rows if row["request_id"] in written))


class FeedbackWriter(BatchWriter):
    table: ClassVar[Table | None] = Feedback.__table__
