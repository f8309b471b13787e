"""Active health checks (the `health_checks:` section; off without it), as Envoy's and litellm's background
health checks: every `interval_s` each self-hosted deployment is asked whether it is up (a Pitstop engine in
this process: its step loop alive; an OpenAI-compatible server over HTTP: `GET {api_base}/models`, within
`timeout_s`). One that fails `unhealthy_after` probes in a row is taken out of routing until `healthy_after`
pass in a row again.

Why beside the passive cooldown (gateway/deployments.py): a cooldown is learnt from requests, so a dead
deployment fails `allowed_fails` of them first (each a connection error and a retry), and a hung one
(its port open, nothing answered) holds each until `request_timeout_s`; a probe finds both between
requests. Deployments through litellm (API providers) are not probed: a probe would be a billed call, and
their failures are what the cooldown is for. Each replica probes for itself; a deployment a reload adds is
probed from the next round, one it retires no more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.health_check_config import HealthCheckConfig

if TYPE_CHECKING:
    from gateway.deployments import Deployment

log = logging.getLogger("pitstop.gateway")


def probed(deployment: Deployment) -> bool:
    """Whether the deployment's backend asks the deployment itself when asked whether it is healthy."""
    return getattr(deployment.backend, "probes_health", False)


class HealthChecker:
    """Probes `deployments()` (read each round: a reload changes them) until `close()`."""

    def __init__(self, config: HealthCheckConfig, deployments: Callable[[], list[Deployment]],
                 registry: CollectorRegistry) -> None:
        self.config, self.deployments = config, deployments
        self.probes = Counter("pitstop_health_checks", "Active health probes of deployments, by outcome",
                              ["deployment", "outcome"], registry=registry)
        self.healthy = Gauge("pitstop_deployment_healthy", "1 while a probed deployment is in routing, 0 while "
                             "its probes took it out", ["deployment"], registry=registry)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health checks")

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:  # a bug here must not stop the probes for good
                log.exception("health checks: a round failed")
            await asyncio.sleep(self.config.interval_s)

    async def round(self) -> None:
        """Probe every probed deployment at once; each result moves its counters."""
        targets = [d for d in self.deployments() if probed(d)]
        results = await asyncio.gather(*(self._probe(d) for d in targets))
        for deployment, outcome in zip(targets, results, strict=True):
            self.probes.labels(deployment.name, outcome).inc()
            self._count(deployment, outcome == "ok")
            self.healthy.labels(deployment.name).set(0 if deployment.unhealthy else 1)

    async def _probe(self, deployment: Deployment) -> str:
        try:
            ok = await asyncio.wait_for(deployment.backend.healthy(), self.config.timeout_s)
        except TimeoutError:
            return "timeout"
        except Exception as exc:  # a backend's probe that raises says the same as one that answers no
            log.debug("health check of %s raised %r", deployment.name, exc)
            return "failed"
        return "ok" if ok else "failed"

    def _count(self, deployment: Deployment, ok: bool) -> None:
        d = deployment
        if ok:
            d.probes_passed, d.probes_failed = d.probes_passed + 1, 0
            if d.unhealthy and d.probes_passed >= self.config.healthy_after:
                d.unhealthy = False
                log.warning("deployment %s passed %d health checks: back in routing", d.name, d.probes_passed)
        else:
            d.probes_passed, d.probes_failed = 0, d.probes_failed + 1
            if not d.unhealthy and d.probes_failed >= self.config.unhealthy_after:
                d.taken_out()
                log.warning("deployment %s failed %d health checks in a row: out of routing until %d pass",
                            d.name, d.probes_failed, self.config.healthy_after)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
