"""A finished request's cost and tokens, told to the limits of its key and of its key's team, and added to
their rows: each subject's hold released and its cost added in one step (Limiter.settle), in the budget
period it was admitted in; its tokens counted where a token rate applies; a budget threshold crossed told
(gateway/budget_alerts.py). The outcome recorder (gateway/outcomes.py) calls it once a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from gateway.auth import Caller
from gateway.limits.base import Hold, Limiter
from gateway.limits.periods import current_period
from storage.keys import KeyStore
from storage.teams import TeamStore

if TYPE_CHECKING:
    from gateway.budget_alerts import BudgetAlerts

log = logging.getLogger("pitstop.gateway")
Track = Callable[[Coroutine[Any, Any, None]], asyncio.Task]  # runs work the recorder's drain waits for
AddToRow = Callable[[float, int | None], None]  # (usd, period): blocking, run in a thread
Crossed = Callable[[int | None, float, float | None], None]  # (period, cost, spent after) -> alerts


class SpendSettler:
    def __init__(self, limiter: Limiter, keys: KeyStore | None, teams: TeamStore | None,
                 alerts: BudgetAlerts | None, track: Track) -> None:
        self.limiter, self.keys, self.teams, self.alerts, self._track = limiter, keys, teams, alerts, track

    def settle(self, caller: Caller | None, cost: float, tokens: int, hold: Hold | None,
               team_hold: Hold | None) -> list[asyncio.Task]:
        """The tasks that settle it with the limiter: the request's answer waits for them (its client's next
        request must not find its holds); the rows' updates run in the background."""
        if caller is None or caller.key_id is None:
            return []
        settling = []
        if cost > 0 or hold is not None:
            # The budget period it was admitted in (a key without a budget keeps its period's total all the same).
            period = hold.period if hold is not None else current_period(caller.budget_period)
            key_id, keys, alerts = caller.key_id, self.keys, self.alerts
            add = (lambda usd, p: keys.add_spend(key_id, usd, p)) if keys is not None else None
            alert = (lambda p, c, s: alerts.settled(caller, p, c, s)) if alerts is not None else None
            settling.append(self._spend(key_id, add, cost, hold, period, alert))
        if caller.tpm_limit is not None and tokens > 0:  # its key's token rate
            settling.append(self._track(self.limiter.record_tokens(caller.key_id, tokens)))
        team = caller.team
        if team is None:
            return settling
        if cost > 0 or team_hold is not None:
            period = team_hold.period if team_hold is not None else current_period(team.budget_period)
            alerts = self.alerts
            add = (lambda usd, p: self._add_team_spend(team.team_id, usd, p)) if self.teams is not None else None
            alert = (lambda p, c, s: alerts.team_settled(team, p, c, s)) if alerts is not None else None
            settling.append(self._spend(team.subject, add, cost, team_hold, period, alert))
        if team.tpm_limit is not None and tokens > 0:  # the team's token rate: all its keys' together
            settling.append(self._track(self.limiter.record_tokens(team.subject, tokens)))
        return settling

    def _add_team_spend(self, team_id: str, usd: float, period: int | None) -> None:
        assert self.teams is not None
        try:
            self.teams.add_spend(team_id, usd, period)
        except KeyError:  # deleted while a request of its (since revoked) key ran: no row to keep it
            log.info("team %s is gone; its last request's $%.6f is kept on its key alone", team_id, usd)

    def _spend(self, subject: str, add_to_row: AddToRow | None, cost: float, hold: Hold | None, period: int | None,
               alert: Crossed | None) -> asyncio.Task:
        """Settle `subject` (a key, or "team:<id>") with the limiter (the task returned) and add the cost to its
        row (in the background)."""
        if add_to_row is not None and cost > 0:
            self._track(asyncio.to_thread(add_to_row, cost, period))
        if hold is not None:
            return self._track(self._settle(subject, hold, cost, period, alert))
        return self._track(self.limiter.record_spend(subject, cost, period))

    async def _settle(self, subject: str, hold: Hold, cost: float, period: int | None, alert: Crossed | None) -> None:
        spent = await self.limiter.settle(subject, hold.hold_id, cost, period)
        if alert is not None:
            alert(period, cost, spent)
