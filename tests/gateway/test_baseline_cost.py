"""What a request would have cost on its route group's costliest model (gateway/outcomes.baseline_cost),
the figure routing's savings are read from: each case worked out by hand."""

from __future__ import annotations

import pytest

from gateway.outcomes import OutcomeDraft, baseline_cost
from gateway.routing import Route
from routers.choice import RoutingDecision

PREDICTED = {"small": 0.001, "large": 0.010, "local": 0.0}


def draft(served: str, routed: bool = True, **fields: object) -> OutcomeDraft:
    decision = RoutingDecision(model=served, router_name="r", router_version="1", cost_preference=1.0,
                               scores={}, quality={}, predicted_cost_usd=PREDICTED) if routed else None
    return OutcomeDraft(route=Route("auto" if routed else None, served, decision), **fields)  # type: ignore[arg-type]


def test_a_routed_request_scales_its_real_cost_by_the_predicted_ratio() -> None:
    # A longer answer than predicted (0.003 against 0.001) would have been as much longer on the large model.
    assert baseline_cost(draft("small"), 0.003) == pytest.approx(0.030)
    assert baseline_cost(draft("large"), 0.012) == pytest.approx(0.012)


def test_verifying_calls_are_left_out_of_the_baseline() -> None:
    verified = draft("small", extra_cost_usd=0.002)  # a verifier's call on top of the pick's 0.001
    assert baseline_cost(verified, 0.003) == pytest.approx(0.010)


def test_served_at_no_cost_or_outside_the_group_the_prediction_stands() -> None:
    assert baseline_cost(draft("local"), 0.0) == pytest.approx(0.010)  # a free local engine avoided the large
    assert baseline_cost(draft("escalated-to"), 0.05) == pytest.approx(0.010)


@pytest.mark.parametrize("case", ["not routed", "failed", "cache hit"])
def test_otherwise_a_request_costs_what_it_cost(case: str) -> None:
    request = draft("small", routed=case != "not routed")
    if case == "failed":
        request.status = "error"
    if case == "cache hit":
        request.extra["cache"] = "hit"
    assert baseline_cost(request, 0.004) == 0.004
