"""Budget periods (gateway/limits/periods.py): UTC days, weeks from Monday and calendar months, worked out
by hand; and the key store's period total (storage/keys.py) on both databases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.limits.periods import current_period, period_end, period_start
from storage.keys import KeyStore
from storage.migrate import upgrade


def ts(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())  # type: ignore[arg-type]


@pytest.mark.parametrize(("period", "moment", "start", "end"), [
    ("day", ts(2026, 12, 5, 23, 59, 59), ts(2026, 12, 5), ts(2026, 12, 6)),
    ("day", ts(2026, 12, 6), ts(2026, 12, 6), ts(2026, 12, 7)),
    ("week", ts(2026, 12, 5, 12), ts(2026, 11, 30), ts(2026, 12, 7)),  # a Saturday: from Monday the 30th
    ("week", ts(2026, 11, 30), ts(2026, 11, 30), ts(2026, 12, 7)),
    ("month", ts(2026, 12, 31, 23, 59), ts(2026, 12, 1), ts(2027, 1, 1)),
    ("month", ts(2028, 2, 29, 6), ts(2028, 2, 1), ts(2028, 3, 1)),
])
def test_periods_are_utc_days_weeks_and_months(period: str, moment: int, start: int, end: int) -> None:
    assert period_start(period, moment) == start  # type: ignore[arg-type]
    assert period_end(period, start) == end  # type: ignore[arg-type]
    assert current_period(period, moment) == start  # type: ignore[arg-type]
    assert current_period(None, moment) is None


def test_the_key_store_keeps_the_current_periods_spend(storage_url: str) -> None:
    upgrade(storage_url)
    store = KeyStore(storage_url)
    key_id, _ = store.create("team", budget_usd=10.0, budget_period="month")
    store.add_spend(key_id, 1.0, period=100)
    store.add_spend(key_id, 2.0, period=100)
    key = store.get(key_id)
    assert key is not None and (key.period_start, key.period_spent_usd, key.spent_usd) == (100, 3.0, 3.0)
    store.add_spend(key_id, 4.0, period=200)  # the next period starts afresh
    store.add_spend(key_id, 0.5, period=100)  # a request of the last period settled late: not this one's
    store.add_spend(key_id, 0.25)  # no period: the lifetime total only
    key = store.get(key_id)
    assert key is not None and (key.period_start, key.period_spent_usd) == (200, 4.0)
    assert key.spent_usd == pytest.approx(7.75)
    with pytest.raises(ValueError, match="budget_period must be one of day, week, month"):
        store.update(key_id, budget_period="fortnight")
    assert store.update(key_id, budget_period=None).budget_period is None
