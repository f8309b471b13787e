"""Budget periods: a key's budget counts what it spent since the start of the current UTC day, week
(from Monday) or calendar month, and is whole again when the next one starts, as a team's monthly
allowance works. Without a period a budget counts the key's whole life.

A period is named by its start in Unix seconds; the limiters keep one spend total per key and period
(gateway/limits/), the database one for the current period beside the lifetime total (storage/keys.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from storage.keys import BUDGET_PERIODS

BudgetPeriod = Literal["day", "week", "month"]
PERIODS: tuple[str, ...] = BUDGET_PERIODS  # as the keys table stores them


def now_s() -> float:
    """The clock periods are read from (tests move it)."""
    return time.time()


def period_start(period: BudgetPeriod, at_s: float) -> int:
    """The start (Unix seconds, UTC) of the period holding `at_s`."""
    moment = datetime.fromtimestamp(at_s, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start = day
    elif period == "week":
        start = day - timedelta(days=day.weekday())
    else:
        start = day.replace(day=1)
    return int(start.timestamp())


def period_end(period: BudgetPeriod, start_s: int) -> int:
    """When the period starting at `start_s` ends: the next one's start."""
    start = datetime.fromtimestamp(start_s, UTC)
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    else:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return int(end.timestamp())


def current_period(period: BudgetPeriod | None, at_s: float | None = None) -> int | None:
    """The current period's start for a budget with `period`; None for a lifetime budget."""
    if period is None:
        return None
    return period_start(period, now_s() if at_s is None else at_s)
