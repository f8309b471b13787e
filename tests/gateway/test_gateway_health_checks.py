"""Active health checks (gateway/health_checks.py) over real sockets: a deployment that hangs (its port open,
nothing answered) or answers 503 is found by its probes and left out of routing before a request reaches
it, where without the checks the first request waits on it until its timeout and is retried; it comes back
once its probes pass; a model whose only deployment is out goes straight to its fallback. The counters on
their own, with fake backends: thresholds, timeouts, probes that raise, deployments that are not probed, a
preferred (session) instance that is out passed over."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import ConfigError, parse_settings
from gateway.deployments import Deployment, DeploymentPool
from gateway.health_check_config import HealthCheckConfig
from gateway.health_checks import HealthChecker
from gateway.model_list_config import ModelInfo
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.upstream import UpstreamProcess

CHECKS = {"interval_s": 0.1, "timeout_s": 0.1, "unhealthy_after": 2, "healthy_after": 2}


@dataclass
class Flaky:
    """An OpenAI-compatible server whose `mode` the test sets: up (answers "from-h"), hung (takes every
    request and answers none), or broken (503s)."""

    mode: str = "up"
    posts: int = 0

    async def _wait_or_answer(self, answer: dict) -> JSONResponse:
        if self.mode == "hung":
            await asyncio.sleep(5)  # past every timeout the tests set; uvicorn's shutdown cuts it
        if self.mode != "up":
            return JSONResponse({"error": {"message": "down", "type": "server_error"}}, status_code=503)
        return JSONResponse(answer)

    async def models(self, request: Request) -> JSONResponse:
        return await self._wait_or_answer({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(self, request: Request) -> JSONResponse:
        self.posts += 1
        return await self._wait_or_answer({
            "id": "chatcmpl-h", "object": "chat.completion", "created": int(time.time()), "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "from-h"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/models", self.models), Route("/v1/chat/completions", self.chat,
                                                                           methods=["POST"])])


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    server = Flaky()
    with serve_in_thread(server.app()) as url:
        yield server, f"{url}/v1"


@pytest.fixture
def upstream(upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> UpstreamProcess:
    return upstreams[0]


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


def two_deployments(tmp_path: Path, flaky_base: str, upstream: UpstreamProcess, **sections: object) -> dict:
    # The flaky one listed first: least outstanding requests sends a lone request to it.
    models = [model_entry("m", flaky_base), model_entry("m", upstream.api_base)]
    return gateway_config(tmp_path, models, server={"request_timeout_s": 1.0, "num_retries": 2}, **sections)


def ask(client, n: int = 1) -> list[str]:  # type: ignore[no-untyped-def]
    return [client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            .choices[0].message.content.split()[0] for _ in range(n)]


def test_a_hung_deployment_is_left_out_before_a_request_waits_on_it(flaky: tuple[Flaky, str],
                                                                    upstream: UpstreamProcess,
                                                                    tmp_path: Path) -> None:
    server, base = flaky
    server.mode = "hung"
    with running_gateway(two_deployments(tmp_path, base, upstream, health_checks=CHECKS)) as gw, gw.http() as http:
        wait_until(lambda: metric(http.get("/metrics").text, "pitstop_deployment_healthy", deployment="m#0") == 0,
                   what="the hung deployment taken out")
        assert ask(gw.openai(), 5) == ["from-a"] * 5
        text = http.get("/metrics").text
        assert server.posts == 0 and metric(text, "pitstop_retries_total", model="m") is None
        assert metric(text, "pitstop_health_checks_total", deployment="m#0", outcome="timeout") >= 2
        assert metric(text, "pitstop_deployment_healthy", deployment="m#1") == 1
        ready = http.get("/readyz")  # the model still has a deployment up; the probes' word, nothing asked again
        assert ready.status_code == 200 and ready.json()["deployments_down"] == ["m#0"]

        server.mode = "up"  # back: in routing once two probes in a row pass
        wait_until(lambda: metric(http.get("/metrics").text, "pitstop_deployment_healthy", deployment="m#0") == 1,
                   what="the deployment back")
        assert "from-h" in ask(gw.openai(), 4)  # least outstanding: a lone request goes to the first listed


def test_without_health_checks_the_first_request_waits_on_the_hung_deployment(flaky: tuple[Flaky, str],
                                                                               upstream: UpstreamProcess,
                                                                               tmp_path: Path) -> None:
    server, base = flaky
    server.mode = "hung"
    with running_gateway(two_deployments(tmp_path, base, upstream)) as gw, gw.http() as http:
        assert ask(gw.openai()) == ["from-a"]  # after its timeout there, retried
        assert server.posts == 1 and metric(http.get("/metrics").text, "pitstop_retries_total", model="m") == 1
        assert "pitstop_deployment_healthy" not in http.get("/metrics").text
        server.mode = "broken"  # /readyz asks each deployment itself
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["deployments_down"] == ["m#0"]


def test_a_503ing_deployment_is_out_and_its_model_falls_back(flaky: tuple[Flaky, str], upstream: UpstreamProcess,
                                                            tmp_path: Path) -> None:
    server, base = flaky
    server.mode = "broken"
    models = [model_entry("m", base), model_entry("backup", upstream.api_base)]
    raw = gateway_config(tmp_path, models, health_checks=CHECKS, fallbacks={"on_error": {"m": ["backup"]}})
    with running_gateway(raw) as gw, gw.http() as http:
        wait_until(lambda: gw.state.pool.cooling("m"), what="m's only deployment out")
        reply = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.headers["x-pitstop-model"] == "backup"
        assert server.posts == 0  # straight to the fallback: the model had no deployment to try
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["models"] == {"m": False, "backup": True}
        assert metric(http.get("/metrics").text, "pitstop_health_checks_total", deployment="m#0",
                      outcome="failed") >= 2


def test_bad_health_check_config_is_refused(tmp_path: Path) -> None:
    models = [model_entry("m", "http://127.0.0.1:9/v1")]
    for bad, words in (({"interval_s": 0}, "interval_s"), ({"timeout_s": 3, "interval_s": 1}, "timeout_s"),
                       ({"unhealthy_after": 0}, "unhealthy_after"), ({"every": 1}, "every")):
        with pytest.raises(ConfigError, match=words):
            parse_settings(gateway_config(tmp_path, models, health_checks=bad))


# The counters, with fake backends and no sockets.

class FakeBackend:
    probes_health = True

    def __init__(self) -> None:
        self.answer: bool | str = True  # True / False, "hang" or "raise"

    async def healthy(self) -> bool:
        if self.answer == "hang":
            await asyncio.sleep(10)
        if self.answer == "raise":
            raise ConnectionError("refused")
        return bool(self.answer)


class ProviderBackend(FakeBackend):
    probes_health = False  # litellm's: never asked


def pool_of(*backends: FakeBackend) -> DeploymentPool:
    pool = DeploymentPool()
    for i, backend in enumerate(backends):
        pool.add(Deployment(f"m#{i}", "m", backend, ModelInfo(), "fake/m"))  # type: ignore[arg-type]
    return pool


def test_thresholds_outcomes_and_what_is_picked() -> None:
    first, second, provider = FakeBackend(), FakeBackend(), ProviderBackend()
    pool = pool_of(first, second, provider)
    checker = HealthChecker(HealthCheckConfig(interval_s=1, timeout_s=0.05, unhealthy_after=2, healthy_after=2),
                            lambda: pool.deployments, CollectorRegistry())
    d0, d1, d2 = pool.by_model["m"]
    provider.answer = False
    first.answer = "hang"
    asyncio.run(checker.round())
    assert not d0.unhealthy and d0.probes_failed == 1  # one failure is not enough
    first.answer = "raise"
    asyncio.run(checker.round())
    assert d0.unhealthy and not d1.unhealthy and not d2.unhealthy and d2.probes_failed == 0  # the provider: not asked
    assert pool.pick("m").name == "m#1"
    assert "m#0" not in {d.name for d in pool.ready("m")} and pool.pick("m", prefer="m#0").name != "m#0"

    second.answer = False
    asyncio.run(checker.round())
    asyncio.run(checker.round())
    assert d1.unhealthy and pool.pick("m", exclude={"m#2"}).name in {"m#0", "m#1"}  # all out: tried anyway
    assert not pool.cooling("m")  # the provider is still in
    d2.cooldown_until = pool.clock() + 60
    assert pool.cooling("m")

    first.answer = True
    asyncio.run(checker.round())
    assert d0.unhealthy and d0.probes_passed == 1  # two in a row bring it back
    asyncio.run(checker.round())
    assert not d0.unhealthy and pool.pick("m").name == "m#0"
    samples = {(s.labels["deployment"], s.labels["outcome"]): s.value
               for s in checker.probes.collect()[0].samples if s.name.endswith("_total")}
    assert samples == {("m#0", "timeout"): 1, ("m#0", "failed"): 3, ("m#0", "ok"): 2,
                       ("m#1", "ok"): 2, ("m#1", "failed"): 4}
