"""The writers the gateway uses: one row per request into `outcomes`, quality signals into `feedback`.

Both are the same `BatchWriter` bound to a table, e.g.:

    writer = OutcomeWriter("sqlite:///var/pitstop.db", spool_path=Path("var/outcomes.spool.jsonl"))
    writer.submit({"request_id": rid, "model": "gpt-4o-mini", "cost_usd": 0.0004, ...})
    ...
    writer.close()  # at shutdown: flushes, or spools what the database could not take
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import Table

from storage.batch_writer import BatchWriter, WriterStats
from storage.models import Feedback, Outcome

__all__ = ["BatchWriter", "FeedbackWriter", "OutcomeWriter", "WriterStats"]


class OutcomeWriter(BatchWriter):
    table: ClassVar[Table | None] = Outcome.__table__


class FeedbackWriter(BatchWriter):
    table: ClassVar[Table | None] = Feedback.__table__
