"""What a key or a team has spent, kept in its own row: the lifetime total and the current budget period's
(gateway/limits/periods.py). The outcome writer adds each batch's costs (`record_spend`, storage/outcome_writer.py)
in the transaction that inserts the batch's rows, from the rows it really inserted: one UPDATE per key and per
team (and budget period) the batch charges, not one a request, and nothing counted twice when a batch or a
spooled row is written again. An UPDATE adds to the stored sums (never reads then writes), so gateway replicas
add concurrently."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Update, case, or_, update
from sqlalchemy.engine import Engine

from storage.models import ApiKey, Team

log = logging.getLogger(__name__)
Charged = tuple[type[ApiKey] | type[Team], str, int | None]  # (table, row id, budget period)


def spend_update(table: type[ApiKey] | type[Team], row_id: str, usd: float, period: int | None) -> Update:
    """Add `usd` to the row's lifetime total. With `period` (the start of the budget period the request was
    admitted in) the period's total too: a later period starts it afresh, and a request of an earlier
    one (settled late) leaves it alone."""
    values: dict[str, Any] = {"spent_usd": table.spent_usd + usd}
    if period is not None:
        newer = or_(table.period_start.is_(None), table.period_start < period)
        values["period_spent_usd"] = case((table.period_start == period, table.period_spent_usd + usd),
                                          (newer, usd), else_=table.period_spent_usd)
        values["period_start"] = case((newer, period), else_=table.period_start)
    return update(table).where(table.id == row_id).values(**values)


def add_spend(engine: Engine, table: type[ApiKey] | type[Team], row_id: str, usd: float,
              period: int | None = None) -> None:
    """`spend_update` in a transaction of its own; KeyError if there is no such row."""
    with engine.begin() as connection:
        if connection.execute(spend_update(table, row_id, usd, period)).rowcount == 0:
            raise KeyError(f"no {'API key' if table is ApiKey else 'team'} with id {row_id!r}")


def spend_sums(rows: Iterable[Mapping[str, Any]]) -> list[tuple[Charged, float]]:
    """What outcome rows add to each key's and team's spend, by budget period: teams first, then keys, each
    by id, the order TeamStore.delete locks a team and its keys in, so that replicas' writers and a deletion
    never wait on each other in a circle."""
    sums: dict[Charged, float] = defaultdict(float)
    for row in rows:
        cost = row.get("cost_usd") or 0.0
        if cost <= 0:
            continue
        if row.get("team_id"):
            sums[(Team, row["team_id"], row.get("team_period_start"))] += cost
        if row.get("api_key_id"):
            sums[(ApiKey, row["api_key_id"], row.get("key_period_start"))] += cost
    return sorted(sums.items(), key=lambda item: (item[0][0] is ApiKey, item[0][1], item[0][2] or 0))


def record_spend(connection: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add `rows`' costs to their keys' and teams' spend, in the caller's transaction. A team deleted while
    its (since revoked) key's request ran has no row left to add to: its key keeps the spend alone."""
    for (table, row_id, period), usd in spend_sums(rows):
        if connection.execute(spend_update(table, row_id, usd, period)).rowcount == 0:
            whose = "team" if table is Team else "API key"
            log.info("%s %s is gone; $%.6f of its requests' spend has no row to go to", whose, row_id, usd)
