"""The routing policies read again on a reload (gateway/config_reload.py): `fallbacks`, `hedging`,
`health_checks`, `guardrails`, `outbound` (where clients' URLs may lead), and server's num_retries, cooldown_s, allowed_fails, routing_strategy and
request_timeout_s. The rest of `server` (host, port, keep-alive, shutdown, body limits) is read when the
listener starts, so a change to it still needs a restart.

The policies that act inside a call (num_retries, hedging, guardrails, the health checks' rescue of calls
in flight) live on the Dispatcher, so a change builds a new one, swapped in with the model list: a request
in flight holds the dispatcher it started with and finishes under its policy (a fallback chain is read
once a request too: gateway/fallbacks.py). Both share the models held through the gateway. Hedging keeps
each model's latency window where the window's size is unchanged (they measure the upstreams, not the
policy: a fresh one would not hedge until `min_samples` calls again) and builds its budgets afresh (a
changed share or burst is a new bucket; an unchanged one starts full, as at start). The pool's cooldown
settings are set in place; the health checker reads its config each round, so a change takes effect at
its next round; a section added starts one, one removed stops it and brings back what it took out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from gateway.config import Settings
from gateway.conversations import turn_hold_s
from gateway.dispatch import Dispatcher
from gateway.guardrails import Guardrails
from gateway.health_checks import HealthChecker
from gateway.health_rescue import Rescues
from gateway.hedging import HedgePolicy
from gateway.outbound_policy import OutboundPolicy

if TYPE_CHECKING:
    from gateway.state import GatewayState

POLICY_SECTIONS = ("fallbacks", "hedging", "health_checks", "guardrails", "outbound")
RELOADABLE_SERVER = ("num_retries", "cooldown_s", "allowed_fails", "routing_strategy", "request_timeout_s")
DISPATCH_POLICIES = {"hedging", "guardrails", "health_checks", "server.num_retries"}


def changed_policies(old: Settings, new: Settings) -> list[str]:
    """The reloadable policies that differ, as `pitstop config diff` and the reload's answer name them."""
    names = [name for name in POLICY_SECTIONS if _dump(getattr(old, name)) != _dump(getattr(new, name))]
    return names + [f"server.{name}" for name in RELOADABLE_SERVER
                    if getattr(old.server, name) != getattr(new.server, name)]


def restart_only_server(old: Settings, new: Settings) -> list[str]:
    """`server`'s settings that differ and are read only at start."""
    before = old.server.model_dump(exclude=set(RELOADABLE_SERVER))
    after = new.server.model_dump(exclude=set(RELOADABLE_SERVER))
    return [f"server.{name}" for name in sorted(before) if before[name] != after.get(name)]


@dataclass
class PreparedPolicies:
    """What a reload's policies swap in, built before the swap (a failure there changes nothing)."""

    changed: list[str]
    dispatcher: Dispatcher | None  # None: the dispatch policies are unchanged
    checker: HealthChecker | None  # a new checker, where `health_checks` was added


def prepare_policies(state: GatewayState, old: Settings, new: Settings) -> PreparedPolicies:
    changed = changed_policies(old, new)
    dispatcher = _dispatcher(state, new) if DISPATCH_POLICIES & set(changed) else None
    checker = None
    if new.health_checks is not None and state.health_checker is None:
        pool = state.pool
        checker = HealthChecker(new.health_checks, lambda: pool.deployments, CollectorRegistry())
        _adopt_metrics(state, checker, "probes", "healthy")
    return PreparedPolicies(changed, dispatcher, checker)


def _dispatcher(state: GatewayState, new: Settings) -> Dispatcher:
    old = state.dispatcher
    guardrails = Guardrails(new.guardrails, CollectorRegistry())
    _adopt_metrics(state, guardrails, "actions")
    hedging = HedgePolicy.build(new.hedging, CollectorRegistry())
    if hedging is not None:
        _adopt_metrics(state, hedging, "hedges")
        if old.hedging is not None and old.hedging.config.window == hedging.config.window:
            hedging._windows = old.hedging._windows  # noqa: SLF001 (the same model's latencies: module docstring)
    rescues = None
    if new.health_checks is not None and new.health_checks.rescue_in_flight:
        rescues = Rescues(CollectorRegistry())
        _adopt_metrics(state, rescues, "rescues")
    dispatcher = Dispatcher(state.pool, new.server.num_retries, guardrails, hedging, rescues)
    dispatcher.holds = old.holds  # a model paused through the gateway stays paused
    return dispatcher


def _adopt_metrics(state: GatewayState, owner: Any, *attrs: str) -> None:
    """`owner`'s metrics, built in a registry of their own, replaced by the gateway's series of the same
    name where one is registered (its counts go on), else registered: /metrics shows one series a name."""
    registry = state.metrics.registry
    for attr in attrs:
        metric = getattr(owner, attr)
        existing = registry._names_to_collectors.get(metric._name)  # noqa: SLF001 (no public lookup by name)
        if existing is not None:
            setattr(owner, attr, existing)
        else:
            registry.register(metric)


def apply_policies(state: GatewayState, prepared: PreparedPolicies, new: Settings) -> HealthChecker | None:
    """Swaps the policies in (no await: called within the model list's swap); returns a health checker
    to close, where `health_checks` was removed."""
    pool, server = state.pool, new.server
    pool.allowed_fails, pool.cooldown_s, pool.strategy = server.allowed_fails, server.cooldown_s, server.routing_strategy
    state.reloader.drain_timeout_s = server.longest_call_s
    state.conversations.max_hold_s = turn_hold_s(server)
    state.outbound.current = OutboundPolicy.of(new.outbound)  # the next connection to a client's URL is judged by it
    if prepared.dispatcher is not None:
        state.dispatcher = prepared.dispatcher
    stopped = None
    if new.health_checks is None and state.health_checker is not None:
        stopped, state.health_checker = state.health_checker, None
        for deployment in pool.deployments:  # what its probes took out comes back: nothing probes it now
            deployment.unhealthy, deployment.probes_failed, deployment.probes_passed = False, 0, 0
        stopped.healthy.clear()
    elif new.health_checks is not None and state.health_checker is not None:
        state.health_checker.config = new.health_checks  # read each round
    elif prepared.checker is not None:
        state.health_checker = prepared.checker
        prepared.checker.start()
    return stopped


def _dump(section: object) -> object:
    if section is None:
        return None
    if isinstance(section, list):
        return [_dump(item) for item in section]
    dump = getattr(section, "model_dump", None)
    return dump() if dump is not None else section
