"""The model list read again without a restart: `POST /config/reload` (master key) or SIGHUP to `pitstop
serve` re-reads the config file the gateway started from and brings its deployments in line with the
file's `model_list`, as Envoy and nginx take a new config: what is unchanged keeps serving untouched
(its requests in flight, queue, rpm / tpm window, latency averages and name), a new entry becomes a
deployment once its backend has started, and a deployment whose entry is gone (or changed: it is
replaced) takes no new request at once and is closed when its requests in flight and queued have ended.

`route_groups` are reloaded too: a group whose config and whose models' model_info (the router's
candidates' prices) are unchanged keeps its router as it is (hot-reloaded versions, counts); one added or
changed is built afresh before the swap, its artifact watched from then on; one removed is gone. A group
that calibrates its cost preference on its traffic has its calibration loop started, stopped or restarted
likewise (it reads its traffic from the outcome log: nothing is lost). The routing policies (fallbacks, hedging, health_checks, guardrails, server's retry,
cooldown, strategy and timeout) are swapped with the model list: gateway/policy_reload.py, and so are
wildcard entries: gateway/wildcard_reload.py, and `limits` (but fail_open) and `alerts`:
gateway/limits_reload.py. Every other section (auth, storage, caches, the rest of
server, ...) is read when its parts are built, so a file that changes one is refused whole, naming them. A
file that does not parse or validate is refused the same way; in every refusal nothing changes and the
gateway keeps serving what it had."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from gateway.backends.base import Backend
from gateway.config import ConfigError, Settings, load_settings
from gateway.deployment_build import adapter_backend, entry_key, make_backend, new_deployment
from gateway.deployments import Deployment
from gateway.limits_reload import LIMIT_SECTIONS, apply_limits, changed_limits, restart_only_limits
from gateway.model_list_config import LOCAL_PROVIDER, ModelEntry
from gateway.outbound_policy import OutboundRules
from gateway.policy_reload import (
    POLICY_SECTIONS,
    PreparedPolicies,
    apply_policies,
    prepare_policies,
    restart_only_server,
)
from gateway.route_calibration import RouteCalibrator
from gateway.routing import GroupRouter, changed_groups
from gateway.wildcard_reload import (
    WildcardPlan,
    apply_wildcards,
    changed_patterns,
    dropped_deployments,
    plan_wildcards,
)

if TYPE_CHECKING:
    from gateway.health_checks import HealthChecker
    from gateway.state import GatewayState

log = logging.getLogger("pitstop.gateway")
RETIRE_POLL_S = 0.1  # how often a retired deployment is checked for requests still running


class ReloadRefused(ValueError):
    """Why a config file cannot be taken without a restart (nothing was changed)."""


@dataclass
class ReloadPlan:
    """For each entry of the new model list, in order, the deployment that stays (None: one to build);
    the deployments whose entries are gone."""

    entries: list[ModelEntry]
    kept: list[Deployment | None]
    retired: list[Deployment]

    @property
    def added(self) -> list[ModelEntry]:
        return [entry for entry, kept in zip(self.entries, self.kept, strict=True) if kept is None]


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)  # new deployments' names
    retired: list[str] = field(default_factory=list)  # names of those taken out (closed once idle)
    kept: int = 0
    models_added: list[str] = field(default_factory=list)
    models_removed: list[str] = field(default_factory=list)
    route_groups_changed: list[str] = field(default_factory=list)  # added, removed or rebuilt
    policies_changed: list[str] = field(default_factory=list)  # gateway/policy_reload.py's names
    wildcards_changed: list[str] = field(default_factory=list)  # patterns added, removed or changed
    stopped_checker: HealthChecker | None = None  # `health_checks` removed: closed after the swap

    def as_json(self) -> dict:
        return {"object": "config.reload", "added": self.added, "retired": self.retired, "kept": self.kept,
                "models_added": self.models_added, "models_removed": self.models_removed,
                "route_groups_changed": self.route_groups_changed, "policies_changed": self.policies_changed,
                "wildcards_changed": self.wildcards_changed}


def read_config(path: Path | None) -> Settings:
    if path is None:
        raise ReloadRefused("this gateway was not started from a config file, so there is none to read again")
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise ReloadRefused(f"{path}: {exc}") from None


def plan_reload(old: Settings, new: Settings, current: Iterable[Deployment]) -> ReloadPlan:
    """How `current` (the deployments built from `old`'s model list) becomes `new`'s, or ReloadRefused."""
    changed = restart_sections(old, new)
    if changed:
        raise ReloadRefused(f"only model_list, route_groups, {', '.join(POLICY_SECTIONS)}, server's "
                            "num_retries, cooldown_s, allowed_fails, routing_strategy and request_timeout_s, "
                            "limits (but fail_open), alerts and mcp_servers are "
                            "read again without a restart (the rest needs one); these sections changed: "
                            + ", ".join(changed))
    unmatched: dict[str, list[Deployment]] = {}
    for deployment in current:
        unmatched.setdefault(deployment.entry_key, []).append(deployment)
    kept: list[Deployment | None] = []
    for entry in new.model_list:
        same = unmatched.get(entry_key(entry, new))
        kept.append(same.pop(0) if same else None)  # alike entries keep alike deployments, in order
    return ReloadPlan(list(new.model_list), kept, [d for group in unmatched.values() for d in group])


def restart_sections(old: Settings, new: Settings) -> list[str]:
    """The config's sections that differ and are read only at start."""
    exclude = {"model_list", "route_groups", "base_dir", "server", "mcp_servers", *POLICY_SECTIONS, *LIMIT_SECTIONS}
    before, after = old.model_dump(exclude=exclude), new.model_dump(exclude=exclude)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return changed + restart_only_server(old, new) + restart_only_limits(old, new)


class ConfigReloader:
    """Carries out reloads for one gateway, one at a time, and closes the deployments they retire."""

    def __init__(self, path: Path | None, drain_timeout_s: float = 600.0) -> None:
        self.path = path  # the config file the gateway started from (None: built from a dict)
        self.drain_timeout_s = drain_timeout_s  # a retired deployment's requests get this long to end
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.retired: set[Deployment] = set()  # taken out, not yet closed
        self._watcher: asyncio.Task[None] | None = None  # server.watch_config_s

    async def reload(self, state: GatewayState) -> ReloadReport:
        async with self._lock:
            new = await asyncio.to_thread(read_config, self.path)
            old = state.settings
            # A wildcard's names (gateway/wildcards.py) are not the listed models: untouched, unless now listed.
            listed = set(old.model_names) | set(new.model_names)
            plan = plan_reload(old, new, [d for d in state.pool.deployments if d.model_name in listed])
            regrouped = changed_groups(old, new)
            # Built before the swap (a group's router reads its artifact), off the loop; unchanged ones kept.
            groups = await asyncio.to_thread(state.routes.prepared_groups, old, new) if regrouped else None
            try:
                policies = prepare_policies(state, old, new)
            except (ConfigError, ValueError) as exc:
                raise ReloadRefused(str(exc)) from None
            wildcards = plan_wildcards(state.routes.wildcards, new)
            plan.retired.extend(dropped_deployments(state, wildcards))  # retired as a removed entry's
            built = await self._build(plan, new, state.outbound)
            report = self._swap(state, plan, built, new, groups, policies, wildcards)
            report.wildcards_changed = changed_patterns(old, new)
            report.route_groups_changed = sorted(regrouped)
            if report.stopped_checker is not None:
                await report.stopped_checker.close()
            if regrouped and state.router_artifacts is not None:  # the changed groups' artifacts watched
                await state.router_artifacts.regroup(regrouped)
            if regrouped:
                await recalibrate(state, regrouped)
            now = {group.name: group for group in new.route_groups}
            for name in regrouped:
                if (group := now.get(name)) is None or group.calibrate is None:
                    state.metrics.forget_calibration(name, removed=group is None)
            return report

    async def _build(self, plan: ReloadPlan, settings: Settings, outbound: OutboundRules) -> dict[int, Backend]:
        """The added entries' backends, started; on any failure those started are closed (nothing changed)."""
        built: dict[int, Backend] = {}
        try:
            for index, (entry, kept) in enumerate(zip(plan.entries, plan.kept, strict=True)):
                if kept is not None:
                    continue
                base = entry.litellm_params._adapter_of
                if base is not None:
                    base_backend = plan.kept[base].backend if plan.kept[base] is not None else built[base]  # type: ignore[union-attr]
                    built[index] = adapter_backend(base_backend, entry)
                    continue
                if entry.litellm_params.provider == LOCAL_PROVIDER:  # loads weights for seconds: off the loop
                    built[index] = await asyncio.to_thread(make_backend, entry, settings, outbound)
                else:
                    built[index] = make_backend(entry, settings, outbound)
                await built[index].start()
        except Exception as exc:
            await _close_all(built.values())
            if isinstance(exc, ConfigError | ValueError):
                raise ReloadRefused(str(exc)) from None
            raise
        return built

    def _swap(self, state: GatewayState, plan: ReloadPlan, built: dict[int, Backend], new: Settings,
              groups: dict[str, GroupRouter] | None, policies: PreparedPolicies,
              wildcards: WildcardPlan) -> ReloadReport:
        """No await from here to the end: requests see the old model list or the new one, never a mix."""
        old, old_models, pool = state.settings, set(state.settings.model_names), state.pool
        report = ReloadReport(kept=sum(d is not None for d in plan.kept))
        listed: dict[str, list[Deployment]] = {}
        for index, (entry, kept) in enumerate(zip(plan.entries, plan.kept, strict=True)):
            deployment = kept or new_deployment(pool, entry, built[index], new)
            if kept is None:
                report.added.append(deployment.name)
            listed.setdefault(entry.model_name, []).append(deployment)
        for model in old_models - listed.keys():
            pool.by_model.pop(model, None)
        pool.by_model.update(listed)
        state.settings = new
        apply_wildcards(state, wildcards, new)
        state.routes.refresh_models(new)
        if groups is not None:
            state.routes.groups = groups
        report.stopped_checker = apply_policies(state, policies, new)
        report.policies_changed = policies.changed + changed_limits(old, new) + (  # /mcp reads it at each request
            ["mcp_servers"] if old.mcp_servers != new.mcp_servers else [])
        apply_limits(state, new)
        state.models_changed(new, changed={d.model_name for d in plan.retired} | {e.model_name for e in plan.added})
        for deployment in plan.retired:
            report.retired.append(deployment.name)
            self.retired.add(deployment)
            task = asyncio.get_running_loop().create_task(self._retire(state, deployment))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        report.models_added = sorted(listed.keys() - old_models)
        report.models_removed = sorted((old_models - listed.keys()) | set(wildcards.dropped))
        log.info("config reloaded: %d deployments kept, added %s, retired %s", report.kept,
                 report.added or "none", report.retired or "none")
        return report

    async def _retire(self, state: GatewayState, deployment: Deployment) -> None:
        """Closes `deployment` once nothing runs or waits on it (or after the drain timeout), and forgets it."""
        deadline = time.monotonic() + self.drain_timeout_s
        while _busy(deployment) and time.monotonic() < deadline:
            await asyncio.sleep(RETIRE_POLL_S)
        await self._close(deployment)
        forget(state, deployment.name)

    async def _close(self, deployment: Deployment) -> None:
        self.retired.discard(deployment)
        if any(_serving(d) is _serving(deployment) for d in self.retired):
            return  # an engine its base and LoRA adapters share, still finishing another's: the last closes it
        try:
            await deployment.backend.close()
        except Exception:
            log.exception("closing retired deployment %s failed", deployment.name)

    def watch(self, interval_s: float, reload: Callable[[], Awaitable[object]]) -> None:
        """Calls `reload` whenever the file has changed (its modification time, size or inode), looked at
        every `interval_s`; a file that is refused is not tried again until it changes once more."""
        assert self.path is not None
        path = self.path

        def signature() -> tuple[int, int, int] | None:
            try:
                stat = os.stat(path)  # through a symlink: a ConfigMap's update swaps the link's target
            except OSError:
                return None
            return stat.st_mtime_ns, stat.st_size, stat.st_ino

        async def loop() -> None:
            seen = signature()
            while True:
                await asyncio.sleep(interval_s)
                now = await asyncio.to_thread(signature)
                if now is not None and now != seen:
                    seen = now
                    with suppress(Exception):  # logged and counted by `reload`
                        await reload()

        self._watcher = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        """At shutdown, after the app's requests have ended: whatever is still retiring is closed now."""
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for deployment in list(self.retired):
            await self._close(deployment)


async def recalibrate(state: GatewayState, regrouped: set[str]) -> None:
    """Calibrated groups added, removed or rebuilt: their calibration loops started, stopped, restarted
    (gateway/route_calibration.py); the gateway's first calibrated group starts its calibrator."""
    if state.calibrator is None:
        if not any(g.group.calibrate is not None for g in state.routes.groups.values()):
            return
        state.calibrator = RouteCalibrator(state.routes, state.db, state.metrics)
        if state.router_artifacts is not None:
            state.router_artifacts.on_swap = state.calibrator.router_changed
        await state.calibrator.start()
        return
    await state.calibrator.regroup(state.routes, regrouped)


def forget(state: GatewayState, name: str) -> None:
    """What the gateway kept by a retired deployment's name (its name is never given again): its latency
    averages, the prefixes it was sent, and its gauges' series, which would otherwise show its last values
    on /metrics for as long as the process runs."""
    balancer = state.pool.balancer
    for key in [key for key in balancer.latencies if key[0] == name]:
        del balancer.latencies[key]
    owners: list[object] = [state.metrics]
    if state.sessions is not None:
        state.sessions.prefixes.forget(name)
        owners.append(state.sessions.metrics)
    for owner in owners:
        for metric in vars(owner).values():
            if not isinstance(metric, Gauge):
                continue
            for family in metric.collect():
                for sample in family.samples:
                    if sample.labels.get("deployment") == name:
                        with suppress(KeyError):  # a series with two samples (none here) goes with the first
                            metric.remove(*sample.labels.values())


def _serving(deployment: Deployment) -> object:
    """What closing the deployment's backend stops: an in-process engine, shared by a base and its adapters."""
    return getattr(deployment.backend, "engine", deployment.backend)


def _busy(deployment: Deployment) -> bool:
    return deployment.outstanding > 0 or (deployment.admission is not None and deployment.admission.waiting > 0)


async def _close_all(backends: Iterable[Backend]) -> None:
    for backend in backends:
        try:
            await backend.close()
        except Exception:
            log.exception("closing a backend built for a refused reload failed")

