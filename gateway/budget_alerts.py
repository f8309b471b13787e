"""Budget alerts: when a key's spend crosses a share of its budget (`alerts.budget_thresholds`, by default
50%, 80% and 100%), one event, `budget.threshold_crossed`:

    {"type": "budget.threshold_crossed", "key_id": "...", "key_name": "team-a", "team_id": null,
     "team_name": null, "threshold": 0.8, "budget_usd": 25.0, "spent_usd": 20.13, "budget_period": "month",
     "period_start": "2026-12-01T00:00:00Z", "period_renews_at": "2027-01-01T00:00:00Z", "at": "...",
     "text": "Pitstop: API key 'team-a' has spent 80% ..."}

A team's budget (gateway/team_limits.py) makes the same event with `team_id` and `team_name` set and
`key_id` and `key_name` null: the team's spend is all its keys' together. A key of a team names its team.

goes as it is to `alerts.webhook_url` (its `text` line lets a Slack or Teams incoming webhook show it), and
as the `data` of a signed event to every webhook endpoint that takes `budget.threshold_crossed`.

Once per crossing, however many replicas: the limiter adds each request's cost in one atomic step and
returns the total it made (Redis INCRBY), so exactly one request's settling sees the total go from below
a threshold to at or past it; a budget period starts every threshold afresh. Off the request path, and
never lost: the event is written to the webhook outbox after the answer, and sent, retried and given up as
every webhook event is (gateway/webhooks.py). A cost settled while the limits' Redis is away is added
later without an alert."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from gateway.access_config import AlertsConfig
from gateway.auth import Caller
from gateway.limits.periods import BudgetPeriod, period_end
from gateway.team_limits import TeamLimits
from gateway.webhooks import WebhookSender
from storage.webhooks import BUDGET_EVENT


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.8f}".rstrip("0")


def crossed(thresholds: list[float], budget_usd: float, spent_before: float, spent_after: float) -> list[float]:
    """The thresholds (shares of `budget_usd`) the spend went past, from below to at or above."""
    return [t for t in thresholds if spent_before < t * budget_usd <= spent_after]


def budget_event(caller: Caller, threshold: float, spent_usd: float, period: int | None) -> dict[str, Any]:
    """A key's budget crossed."""
    assert caller.key_id is not None and caller.budget_usd is not None
    team = caller.team
    return _event(f"API key '{caller.name or caller.key_id}'", {"key_id": caller.key_id, "key_name": caller.name,
                  "team_id": team.team_id if team else None, "team_name": team.name if team else None},
                  caller.budget_usd, caller.budget_period, threshold, spent_usd, period)


def team_budget_event(team: TeamLimits, threshold: float, spent_usd: float, period: int | None) -> dict[str, Any]:
    """A team's budget crossed, by all its keys' spend together."""
    assert team.budget_usd is not None
    return _event(f"team '{team.name}'", {"key_id": None, "key_name": None, "team_id": team.team_id,
                  "team_name": team.name}, team.budget_usd, team.budget_period, threshold, spent_usd, period)


def _event(who: str, ids: dict[str, str | None], budget_usd: float, budget_period: BudgetPeriod | None,
           threshold: float, spent_usd: float, period: int | None) -> dict[str, Any]:
    budget, spent, share = _usd(budget_usd), _usd(spent_usd), f"{threshold:.0%}"
    renews = period_end(budget_period, period) if period is not None and budget_period else None
    span = f" for this {budget_period} (UTC)" if renews is not None else ""
    if threshold >= 1.0:
        whose = "its requests are" if ids["key_id"] else "its keys' requests are"
        text = (f"Pitstop: {who} has spent its whole {budget} budget{span} ({spent}); {whose} refused"
                + (f" until {_iso(renews)}" if renews else " until it is raised"))
    else:
        text = f"Pitstop: {who} has spent {share} of its {budget} budget{span} ({spent})"
    return {"type": "budget.threshold_crossed", **ids,
            "threshold": threshold, "budget_usd": budget_usd, "spent_usd": spent_usd,
            "budget_period": budget_period if period is not None else None,
            "period_start": _iso(period) if period is not None else None,
            "period_renews_at": _iso(renews) if renews is not None else None, "at": _iso(time.time()), "text": text}


class BudgetAlerts:
    def __init__(self, config: AlertsConfig, webhooks: WebhookSender) -> None:
        self.config, self.webhooks = config, webhooks
        self._publishing: set[asyncio.Task] = set()

    def settled(self, caller: Caller, period: int | None, cost: float, spent_after: float | None) -> None:
        """A request of `caller` settled at `spent_after`: alert the thresholds it crossed."""
        if spent_after is None or caller.budget_usd is None or caller.key_id is None or caller.budget_usd <= 0:
            return
        for threshold in crossed(self.config.budget_thresholds, caller.budget_usd, spent_after - cost, spent_after):
            self._publish(caller.key_id, budget_event(caller, threshold, spent_after, period))

    def team_settled(self, team: TeamLimits, period: int | None, cost: float, spent_after: float | None) -> None:
        """A request of a key of `team` settled at the team's `spent_after`: alert the thresholds it crossed."""
        if spent_after is None or team.budget_usd is None or team.budget_usd <= 0:
            return
        for threshold in crossed(self.config.budget_thresholds, team.budget_usd, spent_after - cost, spent_after):
            self._publish(team.team_id, team_budget_event(team, threshold, spent_after, period))

    def _publish(self, object_id: str, event: dict[str, Any]) -> None:
        urls = [self.config.webhook_url] if self.config.webhook_url else []
        task = asyncio.get_running_loop().create_task(self.webhooks.publish(BUDGET_EVENT, object_id, event, urls))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let the events being written finish (up to `timeout_s`)."""
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=timeout_s)
