"""The tool-duration estimator: cold-start prior, per-tool and per-agent distributions with backoff,
persistence, and a fit on the real SWE-agent tool times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent_sessions.durations import ALL, Prior, ToolDurationEstimator, tool_key
from agent_sessions.tool_artifact import load_estimator, observations_from_rows, save_estimator
from bench.agent_workload import TRACE, load_templates


def test_cold_start_is_the_prior() -> None:
    est = ToolDurationEstimator()
    assert est.cdf([est.prior.median_s], ["bash"])[0] == pytest.approx(0.5)
    assert est.cdf([0.01], ["bash"])[0] < 0.01 and est.cdf([60.0], ["bash"])[0] > 0.99


def test_a_tool_learns_its_own_distribution_and_others_back_off_to_the_pool() -> None:
    est = ToolDurationEstimator()
    for _ in range(200):
        est.observe(["view"], 0.05)
    for _ in range(200):
        est.observe(["pytest"], 20.0)
    assert est.cdf([0.1], ["view"])[0] > 0.95  # its own: fast
    assert est.cdf([10.0], ["pytest"])[0] < 0.05  # its own: slow
    unseen = est.cdf([0.1, 25.0], ["never-seen"])
    assert 0.4 < unseen[0] < 0.6 and unseen[1] > 0.95  # the pool of all tools: half fast, half slow


def test_per_agent_distribution_refines_the_tool() -> None:
    est = ToolDurationEstimator()
    for _ in range(100):
        est.observe(["bash"], 1.0, agent="fast-agent")
        est.observe(["bash"], 9.0, agent="slow-agent")
    assert est.cdf([2.0], ["bash"], "fast-agent")[0] > 0.9
    assert est.cdf([2.0], ["bash"], "slow-agent")[0] < 0.1
    assert 0.4 < est.cdf([2.0], ["bash"])[0] < 0.6


def test_several_tools_in_one_turn_are_one_key() -> None:
    assert tool_key(["b", "a", "b"]) == "a+b" and tool_key([]) == ALL


def test_invalid_durations_are_ignored_and_memory_is_bounded() -> None:
    est = ToolDurationEstimator(max_samples=10)
    est.observe(["x"], -1.0)
    est.observe(["x"], float("nan"))
    assert est.count("x") == 0
    for i in range(50):
        est.observe(["x"], float(i))
    assert est.count("x") == 10 and min(est.samples["x"]) == 40.0  # the most recent are kept


def test_artifact_round_trip_and_missing_file_falls_back_to_the_prior(tmp_path: Path) -> None:
    est = ToolDurationEstimator()
    for t in (0.2, 0.4, 3.0):
        est.observe(["bash"], t, agent="a")
    save_estimator(est, tmp_path / "td.json", source="test")
    loaded = load_estimator(tmp_path / "td.json")
    grid = np.array([0.1, 0.3, 1.0, 5.0])
    assert np.allclose(loaded.cdf(grid, ["bash"], "a"), est.cdf(grid, ["bash"], "a"))
    assert load_estimator(tmp_path / "absent.json").count(ALL) == 0
    (tmp_path / "bad.json").write_text("{not json")
    assert load_estimator(tmp_path / "bad.json").count(ALL) == 0


def test_outcome_rows_give_observations() -> None:
    rows = [{"extra": {"tool_wait_s": 0.7, "tools": ["bash"], "agent": "swe"}}, {"extra": None},
            {"extra": {"tool_wait_s": -1}}, {"extra": {"tool_wait_s": 2, "tools": None}}]
    assert list(observations_from_rows(rows)) == [(["bash"], 0.7, "swe"), ([], 2.0, None)]


@pytest.mark.skipif(not TRACE.exists(), reason=f"shared data absent: {TRACE}")
def test_fit_on_real_swe_agent_tool_times() -> None:
    est = ToolDurationEstimator()
    by_tool: dict[str, list[float]] = {}
    for template in load_templates()[:3]:
        for turn in template.turns:
            if turn.tool:
                est.observe([turn.tool], turn.tool_time_s)
                by_tool.setdefault(turn.tool, []).append(turn.tool_time_s)
    for tool, times in by_tool.items():
        if len(times) >= 10:
            median = float(np.median(times))
            # The blended CDF at the data's own median sits near one half (the prior weighs 5 samples).
            assert 0.3 < est.cdf([median], [tool])[0] < 0.8, tool


def test_the_cold_start_prior_is_scipys_log_normal() -> None:
    from scipy.stats import lognorm

    prior = Prior(median_s=2.0, sigma=1.3)
    t = np.array([0.0, 1e-9, 0.1, 1.0, 2.0, 5.0, 100.0, 1e6])
    np.testing.assert_allclose(prior.cdf(t), lognorm.cdf(t, s=1.3, scale=2.0), rtol=0, atol=1e-12)
    assert prior.cdf(np.array([2.0]))[0] == pytest.approx(0.5)
