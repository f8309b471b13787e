"""The writers the gateway uses: one row per request into `outcomes`, quality signals into `feedback`.

Both are the same `BatchWriter` bound to a table, e.g.:

    writer = OutcomeWriter("sqlite:///var/pitstop.db", spool_path=Path("var/outcomes.spool.jsonl"))
    writer.submit({"request_id": rid, "model": "gpt-4o-mini", "cost_usd": 0.0004, ...})
    ...
    writer.close()  # at shutdown: flushes, or spools what the database could not take
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from sqlalchemy import Table

from storage.batch_writer import BatchWriter, WriterStats
from storage.inserts import describe
from storage.models import Feedback, Outcome
from storage.spend import record_spend
from storage.usage import record_usage

log = logging.getLogger(__name__)

__all__ = ["BatchWriter", "FeedbackWriter", "OutcomeWriter", "WriterStats"]


class OutcomeWriter(BatchWriter):
    """Rows into `outcomes`, and in the same transaction their sums into `usage_rollup` (storage/usage.py)
    and their costs into their keys' and teams' spend (storage/spend.py): only the rows this insert wrote
    (RETURNING), so a batch written again after a lost commit, or a spooled row replayed, is not counted
    twice. A row the database refuses for good still has its cost added to its key's and team's spend."""

    table: ClassVar[Table | None] = Outcome.__table__

    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            written = set(connection.execute(self._insert.returning(Outcome.request_id), rows).scalars())
            inserted = [row for row in rows if row["request_id"] in written]
            record_usage(connection, inserted)
            record_spend(connection, inserted)

    def _reject(self, row: Mapping[str, Any], error: BaseException) -> None:
        super()._reject(row, error)
        if "request_id" not in row:  # a spool line that could not be read: nothing known to charge
            return
        try:  # the request was answered and its cost counted by the limiter: the budget must keep it
            with self._engine.begin() as connection:
                record_spend(connection, [row])
        except Exception as spend_error:
            log.error("outcomes writer: the spend of refused row %s is lost: %s", row["request_id"],
                      describe(spend_error))


class FeedbackWriter(BatchWriter):
    table: ClassVar[Table | None] = Feedback.__table__
