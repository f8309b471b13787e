"""Exploration propensities, threshold calibration, and the two-model harness on hand-made cases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from routers.base import Candidate, QualityEstimate, RoutingRequest
from routers.calibration import (
    ChoiceTable,
    calibrate,
    calibrate_estimates,
    calibrate_traffic,
    estimate_requests,
)
from routers.choice import choose, typical_cost
from routers.data.table import long_table, to_wide
from routers.evaluate import Predictions, evaluate_two
from routers.exploration import Exploration, explore, pool_mask

CANDIDATES = [Candidate("strong", input_cost_per_token=1.0), Candidate("weak")]


def test_explore_records_the_served_models_propensity() -> None:
    candidates = [Candidate("a", 1.0), Candidate("b", 2.0), Candidate("c", 3.0)]
    decision = choose(QualityEstimate({"a": 0.2, "b": 0.9, "c": 0.5}), candidates, 10, 0.0, "r", "1")
    assert decision.model == "b" and decision.propensity == 1.0
    served = {}
    rng = random.Random(0)
    for _ in range(3000):
        explored = explore(decision, 0.3, rng)
        served[explored.model] = explored.propensity
    # greedy: 0.7 + 0.3 / 3; any other: 0.3 / 3
    assert served == pytest.approx({"b": 0.8, "a": 0.1, "c": 0.1})
    assert explore(decision, 0.0).model == "b"
    assert explore(decision, 0.3, rng).explore_pool == ("b", "c", "a")  # every model, best first


def test_explore_among_the_best_draws_only_from_them() -> None:
    candidates = [Candidate("a", 1.0), Candidate("b", 2.0), Candidate("c", 3.0)]
    decision = choose(QualityEstimate({"a": 0.2, "b": 0.9, "c": 0.5}), candidates, 10, 0.0, "r", "1")
    rng = random.Random(0)
    served = {}
    for _ in range(3000):
        explored = explore(decision, Exploration(0.3, among=2), rng)
        assert explored.explore_pool == ("b", "c") and explored.explore_epsilon == 0.3
        served[explored.model] = explored.propensity
    assert served == pytest.approx({"b": 0.85, "c": 0.15})  # "a" (the worst utility) is never drawn


@pytest.mark.parametrize("among", [2, 3])
def test_the_vectorised_pool_is_the_one_explore_draws_from(among: int) -> None:
    estimates, tokens, candidates = _random_estimates(400, seed=among)
    table = ChoiceTable(estimates, tokens, candidates)
    exploration = Exploration(0.5, among)
    mask = pool_mask(table.utilities(0.5), table.cost, exploration)
    for i, (estimate, t) in enumerate(zip(estimates, tokens, strict=True)):
        pool = explore(choose(estimate, candidates, t, 0.5, "r", "1"), exploration, random.Random(i)).explore_pool
        assert pool is not None and {table.models[j] for j in np.flatnonzero(mask[i])} == set(pool)


def test_calibration_counts_what_the_pool_serves() -> None:
    """The average of what is served under exploration among the best two, against the real step."""
    estimates, tokens, candidates = _random_estimates(300, seed=11)
    table = ChoiceTable(estimates, tokens, candidates)
    exploration, rng = Exploration(0.4, among=2), random.Random(3)
    decisions = [choose(e, candidates, t, 0.5, "r", "1") for e, t in zip(estimates, tokens, strict=True)]
    served = [explore(d, exploration, rng) for _ in range(40) for d in decisions]
    assert table.average(0.5, "model_share", "c", exploration) == pytest.approx(
        np.mean([d.model == "c" for d in served]), abs=0.01)
    assert table.average(0.5, "avg_cost", None, exploration) == pytest.approx(
        np.mean([d.predicted_cost_usd[d.model] for d in served]), rel=0.03)
    uniform = table.average(0.5, "model_share", "c", Exploration(0.4))
    assert abs(uniform - table.average(0.5, "model_share", "c", exploration)) > 0.02  # the pool matters


def test_calibration_hits_a_share_of_strong_calls() -> None:
    gaps = np.linspace(-0.2, 0.6, 101)  # predicted quality gap strong - weak
    estimates = [QualityEstimate({"strong": 0.5 + g, "weak": 0.5}) for g in gaps]
    result = calibrate_estimates(estimates, [10] * len(gaps), CANDIDATES, "model_share", 0.30, model="strong")
    assert result.achieved <= 0.30 and result.achieved == pytest.approx(0.30, abs=0.011)
    # with costs 1 (strong) and 0 (weak) the cost preference is the threshold on the gap
    assert 0.6 - 0.3 * 0.8 - 0.01 <= result.cost_preference <= 0.6 - 0.3 * 0.8 + 0.01


def test_calibration_hits_an_average_cost() -> None:
    estimates = [QualityEstimate({"strong": 0.5 + g, "weak": 0.5}) for g in np.linspace(0, 0.5, 50)]
    result = calibrate_estimates(estimates, [100] * 50, CANDIDATES, "avg_cost", 40.0)
    assert result.achieved == pytest.approx(40.0, abs=2.0)  # 100 per strong call, so 40% of calls


def _two_model_data():
    rows = []
    for i, (s, w) in enumerate([(1, 0), (1, 1), (0, 0), (1, 0)]):
        for model, q in (("strong", s), ("weak", w)):
            rows.append({"dataset": "t", "prompt_id": str(i), "prompt": f"p{i}", "task": "t", "model": model,
                         "quality": float(q), "prompt_tokens": 5})
    return to_wide(long_table(rows))


def test_two_model_harness_matches_hand_computed_apgr() -> None:
    data = _two_model_data()  # strong 0.75, weak 0.25; strong wins on prompts 0 and 3
    cols = [data.models.index("strong"), data.models.index("weak")]
    perfect = np.zeros((4, 2))
    perfect[:, cols[0]], perfect[:, cols[1]] = [0.9, 0.5, 0.1, 0.8], [0.1, 0.5, 0.1, 0.2]
    result = evaluate_two([Predictions("perfect", perfect, np.zeros((4, 2)))], data, "strong", "weak",
                          shares=np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    router = result["routers"]["perfect"]
    # shares 0, .25, .5, .75, 1 -> quality .25, .5, .75, .75, .75 -> PGR 0, .5, 1, 1, 1
    assert [p["quality"] for p in router["points"]] == pytest.approx([0.25, 0.5, 0.75, 0.75, 0.75])
    assert router["apgr"] == pytest.approx(0.25 * (0.25 + 0.75 + 1 + 1))
    assert router["cpt50"] == pytest.approx(0.25)


def test_a_fixed_reference_cost_trades_quality_for_dollars_at_one_rate() -> None:
    """Two requests, the same quality gain from the costly model; only the long request is costly enough
    to go cheap. Per-request normalisation treats both alike; the fixed reference does not."""
    candidates = [Candidate("big", input_cost_per_token=1e-5), Candidate("small", input_cost_per_token=1e-6)]
    quality = {"big": 0.9, "small": 0.8}
    short, long = 100, 10_000
    # per request: cost term = 0.5 x (c / c_big) -> big 0.5, small 0.05 for both lengths: small wins both.
    for tokens in (short, long):
        assert choose(QualityEstimate(quality), candidates, tokens, 0.5, "r", "1").model == "small"
    # fixed reference: the big model on a 1,000-token request costs 0.01 $; lambda 0.5.
    reference = typical_cost(candidates, 1000, {})
    assert reference == pytest.approx(1e-5 * 1000 + 0.0)  # no output price, so answer length does not matter
    fixed = QualityEstimate(quality, reference_cost_usd=reference)
    # short: big costs 0.001 $ -> 0.9 - 0.05 = 0.85 > small 0.8 - 0.005; long: big 0.9 - 5 < small 0.8 - 0.5.
    assert choose(fixed, candidates, short, 0.5, "r", "1").model == "big"
    assert choose(fixed, candidates, long, 0.5, "r", "1").model == "small"


def _random_estimates(n: int, seed: int) -> tuple[list[QualityEstimate], list[int], list[Candidate]]:
    """Quality on a coarse grid and two equally priced models, so exact ties (broken by cost, then by
    candidate order) occur often; a fixed reference on some requests, per-request normalisation on others."""
    rng = np.random.default_rng(seed)
    candidates = [Candidate("a", 1e-6, 2e-6), Candidate("b", 1e-6, 2e-6), Candidate("c", 3e-6, 9e-6, "strong"),
                  Candidate("d")]
    estimates = []
    for i in range(n):
        quality = {c.model: float(rng.integers(0, 5)) / 4 for c in candidates}
        tokens = {c.model: float(rng.integers(1, 400)) for c in candidates[:3]}  # "d": the default length
        estimates.append(QualityEstimate(quality, tokens, 0.01 if i % 2 else None))
    return estimates, [int(t) for t in rng.integers(1, 2000, size=n)], candidates


@pytest.mark.parametrize("preference", [0.0, 0.05, 0.5, 3.0, 50.0])
def test_the_vectorised_choice_is_choose_request_by_request(preference: float) -> None:
    estimates, tokens, candidates = _random_estimates(400, seed=int(preference * 100))
    table = ChoiceTable(estimates, tokens, candidates)
    expected = [choose(e, candidates, t, preference, "r", "1").model for e, t in zip(estimates, tokens, strict=True)]
    assert [table.models[j] for j in table.chosen(preference)] == expected
    costs = [choose(e, candidates, t, preference, "r", "1").predicted_cost_usd[m]
             for e, t, m in zip(estimates, tokens, expected, strict=True)]
    assert table.average(preference, "avg_cost", None) == pytest.approx(float(np.mean(costs)))
    assert table.average(preference, "model_share", "c") == pytest.approx(expected.count("c") / len(expected))


def test_the_vectorised_choice_takes_each_requests_own_preference() -> None:
    """What logged requests were routed at (a group's preference moved, or a client overrode it)."""
    estimates, tokens, candidates = _random_estimates(400, seed=7)
    preferences = np.random.default_rng(7).choice([0.0, 0.05, 0.5, 3.0], size=400)
    expected = [choose(e, candidates, t, float(p), "r", "1").model
                for e, t, p in zip(estimates, tokens, preferences, strict=True)]
    table = ChoiceTable(estimates, tokens, candidates)
    assert [table.models[j] for j in table.chosen(preferences)] == expected


def test_calibrated_traffic_reports_what_a_held_out_half_gets() -> None:
    class GapRouter:  # the strong model's predicted gain is written in the prompt
        name, version = "gap", "1"

        def estimate(self, request: RoutingRequest, candidates: list[Candidate]) -> QualityEstimate:
            return QualityEstimate({"strong": 0.5 + float(request.prompt), "weak": 0.5})

    requests = [RoutingRequest(str(g), 10) for g in np.random.default_rng(1).uniform(-0.2, 0.6, size=300)]
    result = calibrate_traffic(GapRouter(), requests, CANDIDATES, "model_share", 0.4, model="strong")
    assert result.requests == 300 and result.achieved <= 0.4
    assert result.achieved == pytest.approx(0.4, abs=0.01)
    # the half it was not calibrated on lands near the target too, but is not bound by it
    assert result.held_out_achieved is not None and result.held_out_achieved == pytest.approx(0.4, abs=0.08)
    again = calibrate(GapRouter(), requests, CANDIDATES, "model_share", 0.4, model="strong")
    assert again.cost_preference == result.cost_preference and again.held_out_achieved is None


def test_with_exploration_the_target_holds_for_what_is_served() -> None:
    class GapRouter:
        name, version = "gap", "1"

        def estimate(self, request: RoutingRequest, candidates: list[Candidate]) -> QualityEstimate:
            return QualityEstimate({"strong": 0.5 + float(request.prompt), "weak": 0.5})

    requests = [RoutingRequest(str(g), 10) for g in np.random.default_rng(2).uniform(-0.2, 0.6, size=400)]
    result = calibrate_traffic(GapRouter(), requests, CANDIDATES, "model_share", 0.4, "strong",
                               exploration=Exploration(0.2))
    assert result.achieved <= 0.4 and result.achieved == pytest.approx(0.4, abs=0.01)
    greedy = [choose(GapRouter().estimate(r, CANDIDATES), CANDIDATES, 10, result.cost_preference, "gap", "1")
              for r in requests]
    # served share = 0.8 x greedy share + 0.2 x 1/2, so the greedy choice takes (0.4 - 0.1) / 0.8 = 0.375
    assert np.mean([d.model == "strong" for d in greedy]) == pytest.approx(0.375, abs=0.01)
    rng = random.Random(0)
    served = [explore(d, 0.2, rng).model == "strong" for _ in range(50) for d in greedy]
    assert np.mean(served) == pytest.approx(0.4, abs=0.01)  # the real exploration step, many draws
    plain = calibrate_traffic(GapRouter(), requests, CANDIDATES, "model_share", 0.4, "strong")
    assert plain.cost_preference < result.cost_preference  # ignoring exploration would overshoot


def test_a_learned_router_estimates_traffic_in_one_batch_as_it_does_one_by_one(synthetic_data, tiny_encoder) -> None:
    from routers.families import build_router  # noqa: PLC0415
    from routers.features.featurizer import FeatureSpec  # noqa: PLC0415
    from routers.features.static import StaticEncoder  # noqa: PLC0415

    spec = FeatureSpec("static", ("head", "focus"), True, 12)
    router = build_router("pitstop", synthetic_data.models, spec, StaticEncoder.load(tiny_encoder))
    router.fit(synthetic_data.split("train"))
    candidates = [Candidate("solver", 1e-7, 1e-7), Candidate("big", 1e-5, 1e-5, "strong"), Candidate("new", tier="weak")]
    requests = [RoutingRequest(p, len(p) // 4 + 1) for p in synthetic_data.split("test").prompts]
    batched = estimate_requests(router, requests, candidates)
    assert estimate_requests(router, requests, candidates, chunk=3) == batched  # a server's small batches
    for request, estimate in zip(requests, batched, strict=True):
        single = router.estimate(request, candidates)
        assert estimate.quality == pytest.approx(single.quality, abs=1e-6)
        assert estimate.output_tokens == pytest.approx(single.output_tokens, rel=1e-5)
        assert estimate.reference_cost_usd == single.reference_cost_usd


def test_the_real_cost_ratio_scales_the_average_not_the_choice() -> None:
    candidates = [Candidate("big", input_cost_per_token=1e-5), Candidate("small", input_cost_per_token=1e-6)]
    estimates = [QualityEstimate({"big": 0.9, "small": 0.5 + 0.01 * i}) for i in range(40)]
    table = ChoiceTable(estimates, [100] * 40, candidates)  # predicted: big 1e-3 $, small 1e-4 $
    served = ["big", "small"] * 20
    real = [5e-4, 1e-4] * 20  # big's real answers run half as long as predicted
    assert table.real_cost_ratio(served, real) == pytest.approx((20 * 5e-4 + 20 * 1e-4) / (20 * 1e-3 + 20 * 1e-4))
    assert table.real_cost_ratio(served[:10], real[:10]) is None  # too few logged requests with a cost
    assert table.real_cost_ratio(["gone"] * 40, real) is None  # served by models no longer in the group
    before_choice, before_average = table.chosen(0.2), table.average(0.2, "avg_cost", None)
    table.cost_scale = 0.5
    assert (table.chosen(0.2) == before_choice).all()
    assert table.average(0.2, "avg_cost", None) == pytest.approx(0.5 * before_average)
    assert table.rows(np.arange(5)).cost_scale == 0.5
