"""Deployments of each model: among those with headroom under their rpm / tpm
(gateway/deployment_limits.py), least outstanding requests first, or with `server.routing_strategy:
latency` the lowest expected wait (gateway/latency_balance.py); a deployment that keeps failing cools
down for a while (litellm's allowed_fails / cooldown_time semantics), and one its active health checks
found down is left out until they find it up (gateway/health_checks.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.admission import AdmissionQueue
from gateway.backends.base import Backend
from gateway.deployment_limits import AtLimit, DeploymentsRateLimited, DeploymentWindow, Limit
from gateway.image_tokens import DEFAULT, ImageTokens
from gateway.latency_balance import LatencyBalancer, RoutingStrategy
from gateway.model_list_config import ModelInfo
from gateway.pricing import TokenUsage, token_cost


@dataclass(eq=False)
class Deployment:
    name: str  # unique: model name plus index, e.g. "tiny-small#0"
    model_name: str
    backend: Backend
    info: ModelInfo
    provider_model: str  # litellm_params.model, for the outcome row
    outstanding: int = 0
    failures: int = 0
    cooldown_until: float = 0.0
    admission: AdmissionQueue | None = None  # model_info.max_concurrency (gateway/admission.py)
    window: DeploymentWindow | None = None  # litellm_params.rpm / tpm (gateway/deployment_limits.py)
    entry_key: str = ""  # the config entry it was built from (gateway/config_reload.py keeps it across a reload)
    image_tokens: ImageTokens = DEFAULT  # what an image part counts for in its estimates (gateway/image_tokens.py)
    # Active health checks (gateway/health_checks.py): out of routing while `unhealthy`; probes in a row.
    unhealthy: bool = False
    probes_passed: int = 0
    probes_failed: int = 0
    # Resolved when the probes take it out: the calls waiting on it hear of it (gateway/health_rescue.py).
    _outage: asyncio.Future[None] | None = field(default=None, repr=False)

    def outage(self) -> asyncio.Future[None]:
        """What a call sent now waits on besides its answer: done when the probes next take the deployment out."""
        if self._outage is None:
            self._outage = asyncio.get_running_loop().create_future()
        return self._outage

    def taken_out(self) -> None:
        """The probes took it out: the calls waiting on it hear so; calls sent later wait on the next outage."""
        self.unhealthy = True
        if self._outage is not None and not self._outage.done():
            self._outage.set_result(None)
        self._outage = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                 cache_creation_tokens: int = 0) -> float:
        """At its prices, cache reads and writes as providers bill them (gateway/pricing.py)."""
        return token_cost(self.info, TokenUsage(prompt_tokens, completion_tokens, cached_tokens, cache_creation_tokens))

    def at_limit(self, tokens: int) -> AtLimit | None:
        """Whether a request of `tokens` (its prompt's estimate) would pass this deployment's rpm or tpm."""
        return None if self.window is None else self.window.at_limit(tokens)

    def available(self, now: float) -> bool:
        """Neither cooling down after failed calls nor taken out by its health checks."""
        return self.cooldown_until <= now and not self.unhealthy

    @property
    def uses_rank(self) -> bool:
        """Whether a request's place here depends on its rank: its admission queue or its engine orders by it."""
        return self.admission is not None or self.backend.uses_rank


@dataclass
class DeploymentPool:
    allowed_fails: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    by_model: dict[str, list[Deployment]] = field(default_factory=dict)
    # Hears of each deployment passed over for its rpm / tpm (the gateway's metrics).
    on_limited: Callable[[Deployment, Limit], None] | None = None
    strategy: RoutingStrategy = "least-outstanding"
    balancer: LatencyBalancer = field(default_factory=LatencyBalancer)  # with strategy "latency"
    # Names handed out a model: a name is never reused, so a reload's new deployment starts afresh in the
    # balancer, the metrics and the sessions that named the one it replaced.
    _issued: dict[str, int] = field(default_factory=dict)

    def add(self, deployment: Deployment) -> None:
        self.by_model.setdefault(deployment.model_name, []).append(deployment)

    def issue_name(self, model_name: str) -> str:
        """The next deployment name of `model_name`: "model#0", "model#1", ..."""
        index = self._issued.get(model_name, 0)
        self._issued[model_name] = index + 1
        return f"{model_name}#{index}"

    def __contains__(self, model_name: str) -> bool:
        return model_name in self.by_model

    def image_rules(self, model_name: str) -> list[ImageTokens]:
        """What an image counts for on each of the model's deployments (a request's estimate takes the most)."""
        return [d.image_tokens for d in self.by_model.get(model_name, ())]

    def uses_rank(self, model_name: str) -> bool:
        return any(d.uses_rank for d in self.by_model.get(model_name, ()))

    @property
    def deployments(self) -> list[Deployment]:
        return [d for group in self.by_model.values() for d in group]

    def pick(self, model_name: str, exclude: set[str] = frozenset(), prefer: str | None = None, tokens: int = 0,
             limited: dict[str, Limit] | None = None, measure: str | None = None) -> Deployment | None:
        """`prefer` (a deployment name) wins when it is available and has headroom: session affinity.
        Deployments at their rpm / tpm for a request of `tokens` are passed over (named in `limited`);
        where every one left is, DeploymentsRateLimited. `measure`: what the request is weighed by under
        the latency strategy (latency_balance.measure_of)."""
        now = self.clock()
        options = [d for d in self.by_model.get(model_name, ()) if d.name not in exclude]
        if not options:
            return None
        hits = self._hits(options, tokens)
        if limited is not None:
            limited.update((name, hit.limit) for name, hit in hits.items())
        within = [d for d in options if d.name not in hits]
        if not within:
            raise DeploymentsRateLimited(model_name, hits)
        ready = [d for d in within if d.available(now)]
        if prefer is not None:
            for d in ready:
                if d.name == prefer:
                    return d
        if ready:
            return self.least_loaded(ready, measure)
        # None available: the one back soonest, of those its probes have not taken out if any (a probe may
        # be wrong, a call is the real test: where every one is out, they are tried all the same).
        healthy = [d for d in within if not d.unhealthy] or within
        return min(healthy, key=lambda d: d.cooldown_until)

    def least_loaded(self, options: list[Deployment], measure: str | None) -> Deployment:
        """Of `options` (not empty), where a request waits least: by the strategy (the module's docstring)."""
        if self.strategy != "latency" or measure is None or len(options) == 1:
            return min(options, key=lambda d: d.outstanding)
        by_name = {d.name: d for d in options}
        return by_name[self.balancer.choose(list(by_name), measure, lambda n: by_name[n].outstanding, self.clock())]

    def observe(self, deployment: Deployment, measure: str, value: float | None) -> None:
        """A call that `deployment` answered, its value of `measure` (latency_balance.speed)."""
        if self.strategy == "latency" and value is not None:
            self.balancer.observe(deployment.name, measure, value, self.clock())

    def _hits(self, options: list[Deployment], tokens: int) -> dict[str, AtLimit]:
        hits: dict[str, AtLimit] = {}
        for d in options:
            if (hit := d.at_limit(tokens)) is not None:
                hits[d.name] = hit
                if self.on_limited is not None:
                    self.on_limited(d, hit.limit)
        return hits

    def ready(self, model_name: str, exclude: set[str] = frozenset(), tokens: int = 0) -> list[Deployment]:
        """The model's deployments available (not cooling down nor taken out by its health checks) and not at
        their rpm / tpm, less `exclude`: where a hedge may go."""
        now = self.clock()
        return [d for d in self.by_model.get(model_name, ())
                if d.available(now) and d.name not in exclude and d.at_limit(tokens) is None]

    def cooling(self, model_name: str) -> bool:
        """Whether no deployment of the model is available, every one cooling down or taken out by its health
        checks (a fallback may go straight on)."""
        now = self.clock()
        deployments = self.by_model.get(model_name, ())
        return bool(deployments) and not any(d.available(now) for d in deployments)

    def mark_failure(self, deployment: Deployment) -> None:
        deployment.failures += 1
        if deployment.failures >= self.allowed_fails:
            deployment.cooldown_until = self.clock() + self.cooldown_s
            deployment.failures = 0

    def mark_success(self, deployment: Deployment) -> None:
        deployment.failures = 0
