"""The TTL policy: value = P(return) x P(back within T) x benefit - memory cost x T."""

from __future__ import annotations

import pytest

from agent_sessions.durations import ToolDurationEstimator
from agent_sessions.ttl_policy import EngineCosts, TTLPolicy, TurnEnd, memory_pressure

COSTS = EngineCosts(prefill_tokens_per_s=10_000.0, kv_capacity_tokens=500_000, memory_pressure=1.0)


def trained(durations: list[float], tool: str = "bash") -> TTLPolicy:
    est = ToolDurationEstimator()
    for d in durations:
        est.observe([tool], d)
    return TTLPolicy(est, max_ttl_s=120.0)


def end(context: int, turns: int = 5, returns: int = 4, tools: tuple[str, ...] = ("bash",),
        seen: bool = True, declares: bool = True) -> TurnEnd:
    return TurnEnd(context, turns, returns, list(tools), seen, declares)


def test_ttl_just_covers_the_learned_tool_duration() -> None:
    policy = trained([0.5 + 0.01 * (i % 10) for i in range(300)])
    decision = policy.choose(end(30_000), COSTS)
    assert 0.59 <= decision.ttl_s <= 1.0  # past the slowest observed run, not much more
    assert decision.p_within > 0.95 and decision.value_s > 0


def test_zero_when_not_worth_it() -> None:
    policy = trained([0.5] * 100)
    assert policy.choose(end(50), COSTS).ttl_s == 0  # nothing to re-prefill
    chat = end(30_000, turns=1, returns=0, tools=(), seen=False, declares=False)
    assert policy.choose(chat, COSTS).ttl_s == 0  # a chat turn that offered no tools
    slow = trained([300.0] * 200)  # the program is always away far longer than any useful TTL
    assert slow.choose(end(30_000), COSTS).ttl_s == 0


def test_longer_contexts_earn_longer_pins() -> None:
    policy = trained([0.5 * 1.1**i for i in range(40)])  # 0.5 s .. 20 s, a spread of tool times
    contended = EngineCosts(10_000.0, 100_000, memory_pressure=1.0)
    short, long = (policy.choose(end(c), contended).ttl_s for c in (5_000, 60_000))
    assert 0 < short < long


def test_programs_that_keep_coming_back_earn_longer_pins() -> None:
    policy = trained([0.5 * 1.1**i for i in range(40)])
    fresh = end(20_000, turns=1, returns=0, seen=False)
    veteran = end(20_000, turns=20, returns=19, seen=False)
    assert policy.p_return(fresh) < policy.p_return(veteran)
    assert policy.choose(fresh, COSTS).ttl_s <= policy.choose(veteran, COSTS).ttl_s
    assert policy.choose(veteran, COSTS).ttl_s > 0


def test_memory_pressure_shortens_pins() -> None:
    policy = trained([0.5 * 1.1**i for i in range(40)])
    relaxed = EngineCosts(10_000.0, 500_000, memory_pressure=0.05)
    tight = EngineCosts(10_000.0, 100_000, memory_pressure=1.0)
    assert policy.choose(end(40_000), tight).ttl_s < policy.choose(end(40_000), relaxed).ttl_s


def test_a_host_tier_prices_a_lost_context_as_its_copies() -> None:
    """With host memory that holds the context, losing it costs its copies out and back, not its
    re-prefill: the benefit falls to that, and a spread of tool times earns a shorter pin."""
    policy = trained([0.5 * 1.1**i for i in range(40)])
    contended = EngineCosts(10_000.0, 100_000, memory_pressure=1.0)
    tiered = EngineCosts(10_000.0, 100_000, memory_pressure=1.0, host_capacity_tokens=400_000,
                         host_copy_tokens_per_s=400_000.0)
    too_small = EngineCosts(10_000.0, 100_000, memory_pressure=1.0, host_capacity_tokens=20_000)
    assert tiered.miss_s(40_000) == pytest.approx(2 * 40_000 / 400_000.0)
    assert too_small.miss_s(40_000) == contended.reprefill_s(40_000)  # the host cannot hold it
    slow_link = EngineCosts(10_000.0, 100_000, host_capacity_tokens=400_000, host_copy_tokens_per_s=1_000.0)
    assert slow_link.miss_s(40_000) == contended.reprefill_s(40_000)  # recomputing is cheaper
    gpu_only, with_host = (policy.choose(end(40_000), c) for c in (contended, tiered))
    assert with_host.benefit_s < gpu_only.benefit_s / 10
    assert with_host.ttl_s < gpu_only.ttl_s


def test_a_disk_tier_prices_a_context_only_it_can_hold_as_its_copies_and_read() -> None:
    """Past what the host tier holds, a lost context comes back from the drive: its copies over the host
    link and the drive's read; a context the host holds still costs only the copies, one neither holds
    its re-prefill, and a drive slower than recomputing is not taken."""
    policy = trained([0.5 * 1.1**i for i in range(40)])
    gpu_only = EngineCosts(10_000.0, 100_000, memory_pressure=1.0)
    disk = EngineCosts(10_000.0, 100_000, memory_pressure=1.0, host_capacity_tokens=20_000,
                       host_copy_tokens_per_s=400_000.0, disk_capacity_tokens=400_000, disk_read_tokens_per_s=40_000.0)
    assert disk.miss_s(40_000) == pytest.approx(2 * 40_000 / 400_000.0 + 40_000 / 40_000.0)
    assert disk.miss_s(10_000) == pytest.approx(2 * 10_000 / 400_000.0)  # the host tier holds it
    assert disk.miss_s(500_000) == gpu_only.reprefill_s(500_000)  # past the disk too
    slow_drive = EngineCosts(10_000.0, 100_000, disk_capacity_tokens=400_000, disk_read_tokens_per_s=100.0)
    assert slow_drive.miss_s(40_000) == gpu_only.reprefill_s(40_000)
    without, with_disk = (policy.choose(end(40_000), c) for c in (gpu_only, disk))
    assert with_disk.benefit_s < gpu_only.miss_s(40_000) / 5 < without.benefit_s
    assert with_disk.ttl_s < without.ttl_s


def test_never_longer_than_the_maximum() -> None:
    policy = trained([100.0] * 50)
    policy.max_ttl_s = 5.0
    assert policy.choose(end(400_000), EngineCosts(1_000.0, 10**9, 0.0)).ttl_s <= 5.0


@pytest.mark.parametrize(("used", "floor", "expected"), [(0.1, 0.25, 0.25), (0.8, 0.25, 0.8), (1.5, 0.0, 1.0)])
def test_memory_pressure(used: float, floor: float, expected: float) -> None:
    assert memory_pressure(used, floor) == expected
