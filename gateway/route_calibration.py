"""Route groups whose cost preference follows a budget on their own traffic (`calibrate:` in config).

Each calibrated group gets a background loop: load its recent traffic (the outcome log's last
`window` requests of the group, or held-out prompts of a data set), estimate them all with the
router in place, and set the group's cost preference to the smallest one that meets the target
(routers/calibration.py). It runs at start, every `interval_s`, and whenever the group's router is
reloaded (new scores move the preference a budget needs); while a group has fewer than
`min_requests` requests, it keeps its configured preference and looks again within a minute.

The work runs in a worker thread and never fails a request: a database outage, a missing data set or
a broken router leaves the current preference in place, reported as `failed`. What each run did (the
preference, the target, what the calibration traffic gets, what a held-out half of it gets) and what
the requests routed since have got (`since`: their count and average, in the target's terms) are in
`GET /v1/models` under the group's `pitstop.calibration` and in /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy.engine import Engine

from gateway.metrics import GatewayMetrics
from gateway.route_group_config import GroupCalibration
from gateway.router_artifacts import stop_tasks
from gateway.routing import GroupRouter, RouteTable, Tally, estimate_tokens
from routers.base import RoutingRequest
from routers.calibration import TargetKind, calibrate_with_holdout, traffic_table
from routers.verify import VerifyRates
from storage.traffic import LoggedRequest, recent_requests

log = logging.getLogger("pitstop.routing")
RETRY_S = 60.0  # how soon a group that could not be calibrated looks again (at most its interval)
# Requests featurised per batch: small, so the serving thread gets the GIL every few ms while a
# calibration runs (a p99 event-loop stall of ~5 ms instead of ~100 ms at worst, bench/route_calibration.py).
CHUNK = 16

Status = Literal["calibrated", "too_little_traffic", "failed"]


@dataclass(frozen=True)
class CalibrationState:
    status: Status
    cost_preference: float  # in force after this run
    kind: TargetKind
    target: float
    model: str | None  # the group's model a share target counts
    traffic: str
    requests: int
    router_version: str
    achieved: float | None = None  # on the calibration traffic, at the preference set
    held_out_achieved: float | None = None  # calibrated on half the traffic, measured on the other half
    # Real over predicted cost of the logged requests' served models (average-cost targets): what
    # predicted costs are scaled by, so the target is in real dollars; None: none known, not scaled.
    real_over_predicted: float | None = None
    # With the group's `verify:`: how often each pick was checked and escalated (routers/verify.py),
    # from the traffic's logged outcomes, or the prior where it has none; what verifying adds to a
    # pick's cost and to the escalation model's share is counted at these rates.
    verify_rates: dict[str, Any] | None = None
    error: str | None = None
    finished_at: float = 0.0  # unix time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_of(group: GroupRouter) -> tuple[TargetKind, float, str | None]:
    """The target's kind and value, and for a share the group's model it counts (default: the
    costliest per token)."""
    config = group.group.calibrate
    assert config is not None
    if config.avg_cost_usd is not None:
        return "avg_cost", config.avg_cost_usd, None
    assert config.model_share is not None
    model = config.model
    if model is None:
        costliest = max(group.candidates, key=lambda c: c.input_cost_per_token + c.output_cost_per_token)
        model = group.model_for[costliest.model]
    return "model_share", config.model_share, model


def load_traffic(config: GroupCalibration, group_name: str, db: Engine | None) -> list[LoggedRequest]:
    """The requests to calibrate on, oldest first, at most `window` of them. From the outcome log, or
    an export file of it, with the model each went to, its real cost and its verify outcome where the
    router chose the model; from a data set, the prompts alone."""
    if config.traffic == "outcomes":
        if db is None:
            raise RuntimeError("traffic 'outcomes' needs the outcome log")
        return recent_requests(db, group_name, config.window)
    from routers.data.catalog import traffic_rows  # noqa: PLC0415

    return [LoggedRequest(r["prompt"], r.get("model"), r.get("cost_usd"), r.get("routed_model"), r.get("verify_outcome"))
            if r.get("router_name") else LoggedRequest(r["prompt"])
            for r in traffic_rows(config.traffic, group_name)[-config.window:]]


def calibrate_group(group: GroupRouter, traffic: Sequence[LoggedRequest]) -> CalibrationState:
    """Set the group's cost preference from `traffic` (routed as the gateway routes it) and say how.
    An average-cost target is in real dollars: where the traffic has the routed models' real costs,
    predicted costs are scaled by the ratio of real to predicted over them. A group that verifies its
    picks counts the verifiers' and the escalation's calls in the cost, and the escalations in the
    strongest model's share, at the rates its logged outcomes show."""
    config = group.group.calibrate
    assert config is not None
    kind, target, model = target_of(group)
    router = group.router  # the one in place now; a reload meanwhile triggers another run
    facts = {"kind": kind, "target": target, "model": model, "traffic": config.traffic, "requests": len(traffic),
             "router_version": router.version}
    if len(traffic) < config.min_requests:
        return CalibrationState("too_little_traffic", group.cost_preference, **facts, finished_at=time.time())
    requests = [RoutingRequest(r.prompt, estimate_tokens(r.prompt)) for r in traffic]
    alias_of = {name: alias for alias, name in group.model_for.items()}
    table = traffic_table(router, requests, group.candidates, chunk=CHUNK, also_priced=group.verify_priced)
    rates = None
    if group.verify is not None:
        rates = VerifyRates.from_outcomes([r.pick for r in traffic], [r.verify_outcome for r in traffic])
        table = table.verified(group.verify.renamed(alias_of), rates.renamed(alias_of))
    ratio = None
    if kind == "avg_cost":
        ratio = table.real_cost_ratio([alias_of.get(r.pick or "") for r in traffic], [r.cost_usd for r in traffic])
        table.cost_scale = ratio or 1.0
    result = calibrate_with_holdout(table, kind, target, None if model is None else alias_of[model],
                                    group.group.exploration)
    group.cost_preference, group.verify_rates = result.cost_preference, rates
    return CalibrationState("calibrated", result.cost_preference, **facts, achieved=result.achieved,
                            held_out_achieved=result.held_out_achieved, real_over_predicted=ratio,
                            verify_rates=rates.to_dict() if rates is not None else None, finished_at=time.time())


class RouteCalibrator:
    def __init__(self, routes: RouteTable, db: Engine | None, metrics: GatewayMetrics | None = None) -> None:
        self.groups = {name: g for name, g in routes.groups.items() if g.group.calibrate is not None}
        self.db, self.metrics = db, metrics
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # each group's loop

    async def start(self) -> None:
        for name, group in self.groups.items():
            self._begin(name, group)

    def _begin(self, name: str, group: GroupRouter) -> None:
        self._wake[name] = asyncio.Event()
        self._tasks[name] = asyncio.create_task(self._loop(name, group), name=f"route-calibration-{name}")

    async def regroup(self, routes: RouteTable, names: set[str]) -> None:
        """Route groups a config reload added, removed or rebuilt (gateway/config_reload.py): each one's loop
        stops, and starts again on the group now so named where it calibrates (at once: it reads its traffic
        from the outcome log, so nothing the old loop knew is lost)."""
        for name in names:
            if (task := self._tasks.pop(name, None)) is not None:
                await stop_tasks([task])
            self._wake.pop(name, None)
            self.groups.pop(name, None)
            group = routes.groups.get(name)
            if group is not None and group.group.calibrate is not None:
                self.groups[name] = group
                self._begin(name, group)

    def router_changed(self, name: str) -> None:
        """A group's router was swapped: calibrate it again now."""
        if name in self._wake:
            self._wake[name].set()

    async def run_once(self, name: str) -> CalibrationState:
        group = self.groups[name]
        config = group.group.calibrate
        assert config is not None
        try:
            prompts = await asyncio.to_thread(load_traffic, config, name, self.db)
            state = await asyncio.to_thread(calibrate_group, group, prompts)
        except Exception as exc:  # never fatal: the group keeps routing at its current preference
            log.exception("route group %s: calibrating its cost preference failed", name)
            kind, target, model = target_of(group)
            state = CalibrationState("failed", group.cost_preference, kind, target, model, config.traffic, 0,
                                     group.router.version, error=f"{type(exc).__name__}: {exc}",
                                     finished_at=time.time())
        group.calibration, group.since_calibration = state, Tally()
        self._report(name, state)
        return state

    def _report(self, name: str, state: CalibrationState) -> None:
        if state.status == "calibrated":
            log.info("route group %s: cost preference %.4g puts %s at %.4g on %d requests (target %.4g; held-out "
                     "half %.4g)", name, state.cost_preference, state.kind, state.achieved or 0.0, state.requests,
                     state.target, state.held_out_achieved if state.held_out_achieved is not None else float("nan"))
        elif state.status == "too_little_traffic":
            log.info("route group %s: %d requests of traffic, fewer than calibrate.min_requests; cost preference "
                     "stays %.4g", name, state.requests, state.cost_preference)
        if self.metrics is not None:
            self.metrics.observe_calibration(name, state)

    async def _loop(self, name: str, group: GroupRouter) -> None:
        config = group.group.calibrate
        assert config is not None
        while True:
            state = await self.run_once(name)
            wait = config.interval_s if state.status == "calibrated" else min(config.interval_s, RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake[name].wait(), timeout=wait)
            self._wake[name].clear()

    async def close(self) -> None:
        await stop_tasks(list(self._tasks.values()))
