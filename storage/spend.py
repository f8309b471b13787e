"""What a key or a team has spent, kept in its own row: the lifetime total and the current budget period's
(gateway/limits/periods.py). One UPDATE adds to both atomically, so gateway replicas add concurrently."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, or_, update
from sqlalchemy.engine import Engine

from storage.models import ApiKey, Team


def add_spend(engine: Engine, table: type[ApiKey] | type[Team], row_id: str, usd: float,
              period: int | None = None) -> None:
    """Add `usd` to the row's lifetime total. With `period` (the start of the budget period the request was
    admitted in) the period's total too: a later period starts it afresh, and a request of an earlier
    one (settled late) leaves it alone. KeyError if there is no such row."""
    values: dict[str, Any] = {"spent_usd": table.spent_usd + usd}
    if period is not None:
        newer = or_(table.period_start.is_(None), table.period_start < period)
        values["period_spent_usd"] = case((table.period_start == period, table.period_spent_usd + usd),
                                          (newer, usd), else_=table.period_spent_usd)
        values["period_start"] = case((newer, period), else_=table.period_start)
    query = update(table).where(table.id == row_id).values(**values)
    with engine.begin() as connection:
        if connection.execute(query).rowcount == 0:
            raise KeyError(f"no {'API key' if table is ApiKey else 'team'} with id {row_id!r}")
