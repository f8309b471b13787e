"""Calibrate a route group's cost preference to a target on logged or held-out traffic.

Targets: an average cost per request (USD, the chosen model's predicted cost) or the share of requests
on one model (usually the strongest). For one request, the model maximising q - lambda x c / c_max
never gets costlier as lambda grows, so both averages fall monotonically in lambda for the costliest
model; the search brackets the target on a log grid and bisects. The router estimates each request
once; the shared `choose` rule is applied per candidate lambda."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from routers.base import Candidate, QualityEstimate, Router, RoutingRequest
from routers.choice import choose

TargetKind = Literal["avg_cost", "model_share"]
LAMBDA_GRID = np.concatenate([[0.0], np.logspace(-4, 3, 57)])


@dataclass(frozen=True)
class CalibrationResult:
    cost_preference: float
    kind: TargetKind
    target: float
    achieved: float  # on the calibration traffic
    requests: int
    model: str | None = None  # for "model_share"


def _measure(estimates: Sequence[QualityEstimate], tokens: Sequence[int], candidates: list[Candidate],
             preference: float, kind: TargetKind, model: str | None) -> float:
    total = 0.0
    for estimate, n_tokens in zip(estimates, tokens, strict=True):
        decision = choose(estimate, candidates, n_tokens, preference, "calibration", "0")
        total += decision.predicted_cost_usd[decision.model] if kind == "avg_cost" else decision.model == model
    return total / max(len(estimates), 1)


def calibrate_estimates(estimates: Sequence[QualityEstimate], prompt_tokens: Sequence[int],
                        candidates: list[Candidate], kind: TargetKind, target: float,
                        model: str | None = None, iterations: int = 30) -> CalibrationResult:
    """The smallest cost preference whose average (cost or model share) is at most `target`."""
    assert kind == "avg_cost" or model is not None, "a model share needs the model"

    def measure(preference: float) -> float:
        return _measure(estimates, prompt_tokens, candidates, preference, kind, model)

    values = [measure(lam) for lam in LAMBDA_GRID]
    below = [i for i, v in enumerate(values) if v <= target]
    if not below:  # even the cheapest choices stay above the target: the closest we can get
        i = int(np.argmin(values))
        return CalibrationResult(float(LAMBDA_GRID[i]), kind, target, values[i], len(estimates), model)
    first = below[0]
    if first == 0:
        return CalibrationResult(0.0, kind, target, values[0], len(estimates), model)
    low, high, achieved = float(LAMBDA_GRID[first - 1]), float(LAMBDA_GRID[first]), values[first]
    for _ in range(iterations):
        mid = (low + high) / 2
        value = measure(mid)
        if value <= target:
            high, achieved = mid, value
        else:
            low = mid
    return CalibrationResult(high, kind, target, achieved, len(estimates), model)


def calibrate(router: Router, requests: Sequence[RoutingRequest], candidates: list[Candidate],
              kind: TargetKind, target: float, model: str | None = None) -> CalibrationResult:
    estimates = [router.estimate(request, candidates) for request in requests]
    return calibrate_estimates(estimates, [r.prompt_tokens for r in requests], candidates, kind, target, model)
