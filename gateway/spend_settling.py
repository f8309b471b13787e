"""A finished request's cost and tokens, told to the limits of its key and of its key's team: each subject's
hold released and its cost added in one step (Limiter.settle), in the budget period it was admitted in; its
tokens counted where a token rate applies; a budget threshold crossed told (gateway/budget_alerts.py). The
outcome recorder (gateway/outcomes.py) calls it once a request. The keys' and teams' rows learn the cost from
the request's outcome row, which keeps the periods (`spend_periods`): the outcome writer adds each batch's
costs to them in the batch's transaction (storage/spend.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gateway.auth import Caller
from gateway.limits.base import Hold, Limiter
from gateway.limits.periods import current_period

if TYPE_CHECKING:
    from gateway.budget_alerts import BudgetAlerts

Track = Callable[[Coroutine[Any, Any, None]], asyncio.Task]  # runs work the recorder's drain waits for
Crossed = Callable[[int | None, float, float | None], None]  # (period, cost, spent after) -> alerts
Periods = tuple[int | None, int | None]  # (the key's budget period, its team's): starts in Unix seconds


def spend_periods(caller: Caller | None, hold: Hold | None, team_hold: Hold | None) -> Periods:
    """The budget periods a request's cost counts in, of its key and of its key's team: the one its hold was
    taken in (the period it was admitted in), else the current one (a key without a budget holds nothing,
    and keeps its period's total all the same)."""
    if caller is None or caller.key_id is None:
        return None, None
    key = hold.period if hold is not None else current_period(caller.budget_period)
    team = caller.team
    if team is None:
        return key, None
    return key, team_hold.period if team_hold is not None else current_period(team.budget_period)


class SpendSettler:
    def __init__(self, limiter: Limiter, alerts: BudgetAlerts | None, track: Track) -> None:
        self.limiter, self.alerts, self._track = limiter, alerts, track

    def settle(self, caller: Caller | None, cost: float, tokens: int, hold: Hold | None,
               team_hold: Hold | None, periods: Periods) -> list[asyncio.Task]:
        """The tasks that settle it with the limiter, in `periods` (`spend_periods`): the request's answer
        waits for them (its client's next request must not find its holds)."""
        if caller is None or caller.key_id is None:
            return []
        settling = []
        if cost > 0 or hold is not None:
            alerts = self.alerts
            alert = (lambda p, c, s: alerts.settled(caller, p, c, s)) if alerts is not None else None
            settling.append(self._spend(caller.key_id, cost, hold, periods[0], alert))
        if caller.tpm_limit is not None and tokens > 0:  # its key's token rate
            settling.append(self._track(self.limiter.record_tokens(caller.key_id, tokens)))
        team = caller.team
        if team is None:
            return settling
        if cost > 0 or team_hold is not None:
            alerts = self.alerts
            alert = (lambda p, c, s: alerts.team_settled(team, p, c, s)) if alerts is not None else None
            settling.append(self._spend(team.subject, cost, team_hold, periods[1], alert))
        if team.tpm_limit is not None and tokens > 0:  # the team's token rate: all its keys' together
            settling.append(self._track(self.limiter.record_tokens(team.subject, tokens)))
        return settling

    def _spend(self, subject: str, cost: float, hold: Hold | None, period: int | None,
               alert: Crossed | None) -> asyncio.Task:
        """Settle `subject` (a key, or "team:<id>") with the limiter."""
        if hold is not None:
            return self._track(self._settle(subject, hold, cost, period, alert))
        return self._track(self.limiter.record_spend(subject, cost, period))

    async def _settle(self, subject: str, hold: Hold, cost: float, period: int | None, alert: Crossed | None) -> None:
        spent = await self.limiter.settle(subject, hold.hold_id, cost, period)
        if alert is not None:
            alert(period, cost, spent)
