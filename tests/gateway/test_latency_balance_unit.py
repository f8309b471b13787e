"""Latency-aware balancing (gateway/latency_balance.py) on a fake clock: the peak-EWMA, the choice of the
lowest expected wait, what is measured for streams and whole answers, and the pool's use of it."""

from __future__ import annotations

import math

import pytest

from gateway.deployments import Deployment, DeploymentPool
from gateway.latency_balance import LatencyBalancer, PeakEwma, measure_of, speed
from gateway.model_list_config import ModelInfo


def test_the_average_jumps_to_a_peak_and_decays_from_it() -> None:
    ewma = PeakEwma()
    ewma.observe(0.1, now=0.0)
    ewma.observe(0.5, now=1.0)
    assert ewma.value == 0.5  # a slower sample is taken at once
    ewma.observe(0.1, now=11.0)  # one time constant later, a fast one pulls it down part of the way
    assert ewma.value == pytest.approx(0.1 + 0.4 * math.exp(-1.0))
    ewma.observe(0.1, now=11.0)  # at the same instant, nothing decays
    assert ewma.value == pytest.approx(0.1 + 0.4 * math.exp(-1.0))


def test_the_lowest_expected_wait_wins() -> None:
    balancer = LatencyBalancer()
    names = ["slow", "fast"]
    busy = {"slow": 0, "fast": 0}
    assert balancer.choose(names, "stream", busy.__getitem__, 0.0) == "slow"  # neither measured: the first
    balancer.observe("slow", "stream", 0.32, 0.0)
    assert balancer.choose(names, "stream", busy.__getitem__, 0.0) == "fast"  # never measured: tried once
    balancer.observe("fast", "stream", 0.05, 0.0)
    for in_flight, expected in ((0, "fast"), (5, "fast"), (6, "slow")):
        busy["fast"] = in_flight  # 0.05 x (6 + 1) = 0.35 > 0.32 x (0 + 1)
        assert balancer.choose(names, "stream", busy.__getitem__, 0.0) == expected, in_flight
    busy["fast"] = 0
    assert balancer.choose(names, "whole", busy.__getitem__, 0.0) == "slow"  # measures apart: none yet


def test_a_deployment_left_alone_is_asked_again_in_time() -> None:
    balancer = LatencyBalancer(probe_tau_s=30.0)
    balancer.observe("slow", "stream", 1.0, 0.0)
    balancer.observe("fast", "stream", 0.1, 0.0)
    busy = {"slow": 0, "fast": 1}
    assert balancer.choose(["slow", "fast"], "stream", busy.__getitem__, 1.0) == "fast"
    # No sample for 60 s: its average drifts toward the fast one's, 0.1 + 0.9 e^-2 = 0.22 < 0.1 x 2.
    assert balancer.latency("slow", "stream", 60.0, 0.1) == pytest.approx(0.1 + 0.9 * math.exp(-2.0))
    assert balancer.choose(["slow", "fast"], "stream", busy.__getitem__, 60.0) == "fast"
    assert balancer.choose(["slow", "fast"], "stream", busy.__getitem__, 90.0) == "slow"  # 0.145 < 0.2


def test_whole_answers_are_weighed_by_the_second_per_output_token() -> None:
    assert measure_of("chat", True) == measure_of("embedding", True) == "stream"
    assert measure_of("chat", False) == measure_of("completion", False) == "whole"
    assert measure_of("embedding", False) == "embedding"
    assert speed("whole", 2.0, 100) == pytest.approx(0.02)
    assert speed("whole", 2.0, None) is None and speed("whole", 2.0, 0) is None
    assert speed("stream", 0.3, None) == speed("embedding", 0.3, 7) == 0.3


def _pool(strategy: str) -> tuple[DeploymentPool, list[Deployment]]:
    clock = [0.0]
    pool = DeploymentPool(clock=lambda: clock[0], strategy=strategy)  # type: ignore[arg-type]
    deployments = [Deployment(f"m#{i}", "m", None, ModelInfo(), "openai/m") for i in range(2)]  # type: ignore[arg-type]
    for deployment in deployments:
        pool.add(deployment)
    return pool, deployments


def test_the_pool_uses_the_balancer_only_with_the_latency_strategy() -> None:
    pool, (slow, fast) = _pool("latency")
    pool.observe(slow, "stream", 0.3)
    pool.observe(fast, "stream", 0.05)
    assert pool.pick("m", measure="stream") is fast
    fast.outstanding = 7
    assert pool.pick("m", measure="stream") is slow
    assert pool.pick("m", prefer="m#1", measure="stream") is fast  # affinity first, as ever
    plain, (first, second) = _pool("least-outstanding")
    plain.observe(first, "stream", 0.3)
    plain.observe(second, "stream", 0.05)
    assert not plain.balancer.latencies  # nothing learnt: not its strategy
    assert plain.pick("m", measure="stream") is first
    first.outstanding = 1
    assert plain.pick("m", measure="stream") is second
