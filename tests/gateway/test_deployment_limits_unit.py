"""Per-deployment rpm / tpm without HTTP, on a fake clock: the window ages requests and tokens out after
60 s, a request's estimate is corrected to its usage, the pool steers to headroom (a session's deployment
too) and refuses with a Retry-After when none has any; rpm / tpm are checked by the config and never
sent to litellm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.backends.base import CallContext
from gateway.config import ConfigError, parse_settings
from gateway.deployment_build import add_deployment, make_backend
from gateway.deployment_limits import DeploymentsRateLimited, DeploymentWindow
from gateway.deployments import Deployment, DeploymentPool
from gateway.dispatch import Dispatcher
from gateway.model_list_config import ModelInfo
from tests.gateway.harness import gateway_config, model_entry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Answering:
    """A backend that answers at once with a fixed usage."""

    accepts_session = uses_rank = False
    serves_embeddings = native_tools = True

    def __init__(self, usage: dict) -> None:
        self.usage = usage
        self.calls = 0

    async def complete(self, kind: str, body: dict, ctx: CallContext) -> dict:
        self.calls += 1
        return {"choices": [{"index": 0, "message": {"content": "ok"}}], "usage": self.usage}


def pool_of(clock: FakeClock, *limits: tuple[int | None, int | None]) -> DeploymentPool:
    pool = DeploymentPool(clock=clock)
    for i, (rpm, tpm) in enumerate(limits):
        window = None if rpm is None and tpm is None else DeploymentWindow(rpm, tpm, clock)
        pool.add(Deployment(f"m#{i}", "m", Answering({}), ModelInfo(), "openai/m", window=window))  # type: ignore[arg-type]
    return pool


def take(pool: DeploymentPool, tokens: int = 0) -> Deployment:
    deployment = pool.pick("m", tokens=tokens)
    assert deployment is not None and deployment.window is not None
    deployment.window.take(tokens)
    return deployment


def test_requests_leave_the_window_after_60_seconds() -> None:
    clock = FakeClock()
    window = DeploymentWindow(rpm=2, tpm=None, clock=clock)
    window.take(0)
    clock.now += 10
    window.take(0)
    hit = window.at_limit(0)
    assert hit is not None and hit.limit == "rpm" and hit.free_in_s == pytest.approx(50.0)
    clock.now += 50  # the first is exactly 60 s old: gone
    assert window.at_limit(0) is None and window.usage() == (1, 0)
    clock.now += 10
    assert window.usage() == (0, 0)


def test_tokens_count_the_estimate_until_the_usage_corrects_it() -> None:
    clock = FakeClock()
    window = DeploymentWindow(rpm=None, tpm=1000, clock=clock)
    first = window.take(600)
    assert window.at_limit(500) is not None and window.at_limit(400) is None  # 600 + 500 > 1000
    window.settle(first, 100)  # it used far less than estimated
    assert window.usage() == (1, 100) and window.at_limit(900) is None
    clock.now += 30
    second = window.take(900)
    hit = window.at_limit(100)
    assert hit is not None and hit.limit == "tpm" and hit.free_in_s == pytest.approx(30.0)  # the first's 100 leave then
    clock.now += 30
    assert window.usage() == (1, 900)
    window.settle(first, 5000)  # out of the window already: nothing to correct
    assert window.usage() == (1, 900)
    window.settle(second, 950)
    assert window.usage() == (1, 950)


def test_an_empty_window_takes_a_request_larger_than_the_quota() -> None:
    window = DeploymentWindow(rpm=None, tpm=100, clock=FakeClock())
    assert window.at_limit(5000) is None
    window.take(5000)
    assert window.at_limit(1) is not None


def test_the_pool_steers_to_headroom_and_refuses_when_none_is_left() -> None:
    clock = FakeClock()
    pool = pool_of(clock, (2, None), (1, None))
    limited: list[tuple[str, str]] = []
    pool.on_limited = lambda d, limit: limited.append((d.name, limit))
    assert [take(pool).name for _ in range(2)] == ["m#0", "m#0"]  # least outstanding: a tie, the first
    clock.now += 10
    assert take(pool).name == "m#1"
    assert limited == [("m#0", "rpm")]
    clock.now += 20
    with pytest.raises(DeploymentsRateLimited) as refused:
        pool.pick("m")
    assert refused.value.status == 429 and refused.value.code == "deployment_rate_limited"
    assert refused.value.retry_after_s == pytest.approx(30.0)  # m#0's requests leave the window first
    assert refused.value.report == {"refused": {"m#0": "rpm", "m#1": "rpm"}, "retry_after_s": 30.0}
    clock.now += 30
    assert pool.pick("m").name == "m#0"
    assert [d.name for d in pool.ready("m")] == ["m#0"]  # m#1 still full: no hedge goes there


def test_a_preferred_deployment_wins_only_with_headroom() -> None:
    clock = FakeClock()
    pool = pool_of(clock, (None, None), (None, 100))
    assert pool.pick("m", prefer="m#1", tokens=60).name == "m#1"
    pool.by_model["m"][1].window.take(60)  # type: ignore[union-attr]
    limited: dict[str, str] = {}
    assert pool.pick("m", prefer="m#1", tokens=60, limited=limited).name == "m#0"  # 60 + 60 > 100
    assert limited == {"m#1": "tpm"}


def test_the_dispatcher_counts_each_call_and_corrects_it_to_the_answers_usage() -> None:
    clock = FakeClock()
    pool = pool_of(clock, (None, 1000))
    deployment = pool.by_model["m"][0]
    deployment.backend = Answering({"prompt_tokens": 30, "completion_tokens": 12})  # type: ignore[assignment]
    dispatcher = Dispatcher(pool, num_retries=0)
    ctx = CallContext("req-1", estimated_tokens=900)
    answer, dispatched = asyncio.run(dispatcher.complete("m", "chat", {"messages": []}, ctx))
    assert deployment.window is not None and deployment.window.usage() == (1, 42)
    assert dispatched.limited is None
    asyncio.run(dispatcher.complete("m", "chat", {"messages": []}, ctx))  # 42 + 900 fits
    with pytest.raises(DeploymentsRateLimited):  # 84 + 950 does not: refused before any call
        asyncio.run(dispatcher.complete("m", "chat", {"messages": []}, CallContext("req-3", estimated_tokens=950)))
    assert deployment.backend.calls == 2  # type: ignore[attr-defined]


def test_rpm_zero_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, [model_entry("m", "http://127.0.0.1:9/v1", rpm=0)])
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw)
    assert "model_list.0.litellm_params.rpm" in str(caught.value)
    raw = gateway_config(tmp_path, [model_entry("m", "http://127.0.0.1:9/v1", tpm="lots")])
    with pytest.raises(ConfigError, match="model_list.0.litellm_params.tpm"):
        parse_settings(raw)


def test_rpm_and_tpm_are_kept_by_the_gateway_not_sent_to_litellm(tmp_path: Path) -> None:
    entry = model_entry("m", "http://127.0.0.1:9/v1", provider="hosted_vllm", rpm=600, tpm=200000)
    settings = parse_settings(gateway_config(tmp_path, [entry]))
    backend = make_backend(settings.model_list[0], settings)
    assert "rpm" not in backend.params and "tpm" not in backend.params  # type: ignore[attr-defined]
    assert backend.params["api_base"] == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    pool = DeploymentPool()
    deployment = add_deployment(pool, settings.model_list[0], backend, settings)
    assert deployment.window is not None and (deployment.window.rpm, deployment.window.tpm) == (600, 200000)
