"""Budget alerts: when a key's spend crosses a share of its budget (`alerts.budget_thresholds`, by default
50%, 80% and 100%), one JSON event is POSTed to `alerts.webhook_url`, with a `text` line so a Slack or
Teams incoming webhook shows it as it is:

    {"type": "budget.threshold_crossed", "key_id": "...", "key_name": "team-a", "threshold": 0.8,
     "budget_usd": 25.0, "spent_usd": 20.13, "budget_period": "month", "period_start": "2026-12-01T00:00:00Z",
     "period_renews_at": "2027-01-01T00:00:00Z", "at": "...", "text": "Pitstop: API key 'team-a' has spent 80% ..."}

Once per crossing, however many replicas: the limiter adds each request's cost in one atomic step and
returns the total it made (Redis INCRBY), so exactly one request's settling sees the total go from below
a threshold to at or past it; a budget period starts every threshold afresh. Off the request path: the
event is sent after the answer, tried `alerts.attempts` times (1 s, 2 s, ... apart), and an event that
cannot be delivered is logged and counted (`pitstop_budget_alerts_total{outcome="failed"}`), never in a
request's way. A cost settled while the limits' Redis is away is added later without an alert."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter

from gateway.access_config import AlertsConfig
from gateway.auth import Caller
from gateway.limits.periods import period_end

log = logging.getLogger("pitstop.gateway")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.8f}".rstrip("0")


def crossed(thresholds: list[float], budget_usd: float, spent_before: float, spent_after: float) -> list[float]:
    """The thresholds (shares of `budget_usd`) the spend went past, from below to at or above."""
    return [t for t in thresholds if spent_before < t * budget_usd <= spent_after]


def budget_event(caller: Caller, threshold: float, spent_usd: float, period: int | None) -> dict[str, Any]:
    assert caller.key_id is not None and caller.budget_usd is not None
    name = caller.name or caller.key_id
    budget, spent, share = _usd(caller.budget_usd), _usd(spent_usd), f"{threshold:.0%}"
    renews = period_end(caller.budget_period, period) if period is not None and caller.budget_period else None
    span = f" for this {caller.budget_period} (UTC)" if renews is not None else ""
    if threshold >= 1.0:
        text = (f"Pitstop: API key '{name}' has spent its whole {budget} budget{span} ({spent}); "
                "its requests are refused" + (f" until {_iso(renews)}" if renews else " until it is raised"))
    else:
        text = f"Pitstop: API key '{name}' has spent {share} of its {budget} budget{span} ({spent})"
    return {"type": "budget.threshold_crossed", "key_id": caller.key_id, "key_name": caller.name,
            "threshold": threshold, "budget_usd": caller.budget_usd, "spent_usd": spent_usd,
            "budget_period": caller.budget_period if period is not None else None,
            "period_start": _iso(period) if period is not None else None,
            "period_renews_at": _iso(renews) if renews is not None else None, "at": _iso(time.time()), "text": text}


class BudgetAlerts:
    def __init__(self, config: AlertsConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.sent = Counter("pitstop_budget_alerts", "Budget alerts by outcome (sent, failed)", ["outcome"],
                            registry=registry)
        self._client: httpx.AsyncClient | None = None
        self._sending: set[asyncio.Task] = set()
        self.retry_pause_s = 1.0

    def settled(self, caller: Caller, period: int | None, cost: float, spent_after: float | None) -> None:
        """A request of `caller` settled at `spent_after`: alert the thresholds it crossed."""
        if spent_after is None or caller.budget_usd is None or caller.key_id is None or caller.budget_usd <= 0:
            return
        for threshold in crossed(self.config.budget_thresholds, caller.budget_usd, spent_after - cost, spent_after):
            task = asyncio.get_running_loop().create_task(self._send(budget_event(caller, threshold, spent_after,
                                                                                  period)))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout_s)
        problem = ""
        for attempt in range(self.config.attempts):
            if attempt:
                await asyncio.sleep(self.retry_pause_s * attempt)
            try:
                answer = await self._client.post(self.config.webhook_url, json=event)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if answer.is_success:
                self.sent.labels("sent").inc()
                return
            problem = f"HTTP {answer.status_code}"
        self.sent.labels("failed").inc()
        log.error("budget alert for key %s at %.0f%% not delivered after %d attempts (%s)", event["key_id"],
                  event["threshold"] * 100, self.config.attempts, problem)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let the events on their way finish (up to `timeout_s`), then close the client."""
        if self._sending:
            await asyncio.wait(self._sending, timeout=timeout_s)
        if self._client is not None:
            await self._client.aclose()
