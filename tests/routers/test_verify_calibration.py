"""Calibrating a route group that verifies its picks: the rates read from its logged verify outcomes,
what a verified choice spends and who serves it (against hand-computed cases), and, on recorded
replies, that counting verification lands an average-cost target where counting the pick alone
overshoots it."""

from __future__ import annotations

import numpy as np
import pytest

from routers.base import Candidate, QualityEstimate
from routers.calibration import ChoiceTable, calibrate_table
from routers.data.table import Prices, long_table, to_wide
from routers.evaluate import Predictions
from routers.verify import PRIOR_CHECKED, PRIOR_ESCALATED, VerifyPolicy, VerifyRates, expected_overhead
from routers.verify_calibration import calibration_with_verify

CANDIDATES = [Candidate("cheap", 1e-6), Candidate("judge", 2e-6), Candidate("strong", 1e-5)]


def test_rates_come_from_each_picks_logged_outcomes_then_the_pool_then_the_prior() -> None:
    routed = ["a"] * 20 + ["b"] * 5 + ["c", None]
    outcomes = (["accepted"] * 10 + ["escalated"] * 5 + ["escalation_failed"] + ["unchecked"] * 4
                + ["accepted"] * 3 + ["escalated"] * 2 + [None, "accepted"])
    rates = VerifyRates.from_outcomes(routed, outcomes)
    assert rates.of("a") == pytest.approx((16 / 20, 6 / 20))  # a failed escalation was still called
    # b has 5 logged outcomes, c none (its row says the policy did not apply): the pool of all 25
    assert rates.of("b") == rates.of("c") == pytest.approx((21 / 25, 8 / 25))
    assert rates.to_dict()["logged"] == {"a": 20, "b": 5}
    assert VerifyRates.from_outcomes(routed[20:], outcomes[20:]).of("b") == (PRIOR_CHECKED, PRIOR_ESCALATED)
    assert rates.renamed({"a": "A"}).of("A") == rates.of("a")


def _table(also_priced: tuple[Candidate, ...] = ()) -> ChoiceTable:
    estimates = [QualityEstimate({"cheap": q, "judge": 0.6, "strong": 1.0}, {m: 0 for m in ("cheap", "judge", "strong")})
                 for q in (0.6, 0.9)]
    return ChoiceTable(estimates, [100, 100], CANDIDATES, also_priced)  # cheap 1e-4, judge 2e-4, strong 1e-3 $


def test_a_verified_choice_spends_its_calls_and_hands_its_escalations_to_the_strongest() -> None:
    policy = VerifyPolicy(("judge",), "strong", below=0.8)
    rates = VerifyRates({"cheap": 0.5}, {"cheap": 0.25}, {"cheap": 40}, pooled=(1.0, 0.5))
    plain = _table()
    table = plain.verified(policy, rates)
    # request 0: cheap predicted 0.6 < 0.8, verified: 1e-4 + 0.5 x 2e-4 + 0.25 x 1e-3; request 1: 0.9, not
    assert table.spend[:, 0] == pytest.approx([4.5e-4, 1e-4])
    # judge has no verifier but itself: served unchecked; strong is the escalation model
    assert table.spend[:, 1:] == pytest.approx(plain.cost[:, 1:])
    assert (table.chosen(50.0) == plain.chosen(50.0)).all() and (table.chosen(50.0) == 0).all()
    assert table.average(50.0, "avg_cost", None) == pytest.approx((4.5e-4 + 1e-4) / 2)
    assert table.average(50.0, "model_share", "strong") == pytest.approx(0.25 / 2)
    assert table.average(50.0, "model_share", "cheap") == pytest.approx((0.75 + 1) / 2)
    assert plain.average(50.0, "model_share", "strong") == 0.0
    assert table.rows(np.array([1])).spend[:, 0] == pytest.approx([1e-4])
    # the live tally (gateway/routing.py) counts one request as the calibration does
    extra, escalated = expected_overhead(policy, rates, "cheap", 0.6, {"cheap": 1e-4, "judge": 2e-4, "strong": 1e-3})
    assert (float(extra), float(escalated)) == pytest.approx((3.5e-4, 0.25))
    # logged real costs are compared with what the routed model is expected to spend
    assert table.real_cost_ratio(["cheap", "cheap"], [9e-4, 2e-4], min_requests=1) == pytest.approx(2.0)


def test_a_verifier_from_outside_the_group_is_priced_but_never_chosen() -> None:
    policy = VerifyPolicy(("outside",), "strong")
    rates = VerifyRates({}, {}, {}, pooled=(1.0, 0.0))
    table = _table((Candidate("outside", 3e-6),)).verified(policy, rates)
    assert table.models == ["cheap", "judge", "strong"]
    assert table.spend[:, 0] == pytest.approx([4e-4, 4e-4]) and table.spend[:, 1] == pytest.approx([5e-4, 5e-4])


def test_a_target_below_what_verifying_the_cheapest_costs_is_reported_as_missed() -> None:
    policy = VerifyPolicy(("judge",), "strong")
    table = _table().verified(policy, VerifyRates({}, {}, {}, pooled=(1.0, 1.0)))
    result = calibrate_table(table, "avg_cost", 2e-4)  # every cheap pick costs 1.3e-3 for real
    assert result.achieved > 2e-4 and result.achieved == pytest.approx(min(
        table.average(lam, "avg_cost", None) for lam in (0.0, 1.0, 100.0, 1000.0)))


def _recorded(n: int, seed: int) -> tuple[Predictions, object]:
    """'small' is picked where the router trusts it; its answer is right on easy prompts and then
    agrees with 'other'; on hard ones 'other' disagrees and verifying escalates to 'big'."""
    rng = np.random.default_rng(seed)
    cost = {"small": 1.0, "other": 3.0, "big": 40.0}
    rows, predicted = [], []
    for i in range(n):
        easy = bool(rng.random() < 0.6)
        replies = {"small": "A" if easy else "B", "other": "A" if easy or rng.random() < 0.2 else "C", "big": "A"}
        rows += [{"dataset": "t", "prompt_id": f"p{i:04d}", "prompt": "q", "task": "t", "model": m,
                  "quality": float(replies[m] == "A"), "cost_usd": c * (0.5 + rng.random()), "prompt_tokens": 100,
                  "output_tokens": 10, "answer": replies[m]} for m, c in cost.items()]
        predicted.append((0.95, 0.5 + 0.4 * rng.random(), 0.4 + 0.5 * rng.random() * (1.5 if easy else 1)))
    data = to_wide(long_table(rows))
    order = [data.models.index(m) for m in ("big", "other", "small")]
    quality = np.zeros((n, 3))
    quality[:, order] = np.array(predicted)
    return Predictions("pitstop", quality, np.full((n, 3), 10.0)), data


def test_counting_verification_lands_on_the_budget_where_counting_the_pick_overshoots() -> None:
    pred, data = _recorded(800, seed=3)
    prices = Prices({"small": 1e-3, "other": 3e-3, "big": 4e-2}, {"small": 0.0, "other": 0.0, "big": 0.0})
    policy = VerifyPolicy(("other",), "big")
    target = 0.35 * float(data.cost[:, data.models.index("big")].mean())
    report = calibration_with_verify(pred, data, prices, policy, {"35%": target}, rounds=4)
    both = report["targets"]["35%"]
    assert len(both["verify_counted"]["held_out_over_target"]) == 4
    assert both["pick_cost_only"]["mean"] > 1.1  # the verifiers' and escalations' calls go uncounted
    assert abs(both["verify_counted"]["mean"] - 1) < 0.1  # 0.98 at this seed
    assert both["verify_counted"]["mean_abs_error"] < both["pick_cost_only"]["mean_abs_error"]
