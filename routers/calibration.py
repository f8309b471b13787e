"""Calibrate a route group's cost preference to a target on logged or held-out traffic.

Targets: an average cost per request (USD, the chosen model's predicted cost, scaled to real dollars
where logged real costs say by how much: `ChoiceTable.real_cost_ratio`) or the share of requests on
one model (usually the strongest). For one request, the model maximising q - lambda x c / c_max never
gets costlier as lambda grows, so both averages fall monotonically in lambda for the costliest model;
the search brackets the target on a log grid and bisects. The router estimates each request once (a
learned router in batches); the choice rule of routers/choice.py is then applied to all of them at
once for each candidate lambda (`ChoiceTable`, the same arithmetic and tie-break as `choose`).

How close it lands: `calibrate_with_holdout` also calibrates on every other request and measures the
rest at that preference, which is what a fresh stretch of the same traffic would see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from routers.base import Candidate, QualityEstimate, Router, RoutingRequest
from routers.choice import DEFAULT_OUTPUT_TOKENS, predicted_cost
from routers.exploration import NO_EXPLORATION, Exploration, pool_mask
from routers.learned import LearnedRouter, estimate_for
from routers.verify import VerifyPolicy, VerifyRates, expected_overhead

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
    # Calibrated on every other request, measured on the rest (None: not checked).
    held_out_achieved: float | None = None


class ChoiceTable:
    """`choose` (routers/choice.py) for many requests at once: quality and predicted cost as (n, k)
    arrays over the candidates, so one cost preference is one vectorised argmax."""

    def __init__(self, estimates: Sequence[QualityEstimate], prompt_tokens: Sequence[int],
                 candidates: list[Candidate], also_priced: Sequence[Candidate] = ()) -> None:
        """`also_priced`: models never chosen whose calls may still be paid for (a group's verifiers
        from outside it): their predicted cost per request, in `priced_only`."""
        self.models = [c.model for c in candidates]
        n, k = len(estimates), len(candidates)
        self.quality, self.cost = np.zeros((n, k)), np.zeros((n, k))
        for i, (estimate, tokens) in enumerate(zip(estimates, prompt_tokens, strict=True)):
            for j, c in enumerate(candidates):
                self.quality[i, j] = estimate.quality[c.model]
                self.cost[i, j] = predicted_cost(c, tokens, estimate.output_tokens.get(c.model, DEFAULT_OUTPUT_TOKENS))
        self.priced_only = {c.model: np.array([
            predicted_cost(c, tokens, estimate.output_tokens.get(c.model, DEFAULT_OUTPUT_TOKENS))
            for estimate, tokens in zip(estimates, prompt_tokens, strict=True)]) for c in also_priced}
        reference = np.array([e.reference_cost_usd or 0.0 for e in estimates])
        fallback = self.cost.max(axis=1) if k else np.zeros(n)
        self.top = np.where(reference != 0, reference, np.where(fallback != 0, fallback, 1.0))
        # Real dollars per predicted dollar (`real_cost_ratio`): scales the average cost measured
        # against a target, never the costs the choice itself weighs (the request path uses those).
        self.cost_scale = 1.0
        # What serving each choice spends, and the chance it is handed to `escalate_column` instead:
        # the choice's own cost and 0, unless the group verifies its picks (`verified`).
        self.spend, self.escalation = self.cost, np.zeros_like(self.cost)
        self.escalate_column: int | None = None

    def verified(self, policy: VerifyPolicy, rates: VerifyRates) -> ChoiceTable:
        """The same choices under a route group's `verify:` (routers/verify.py): a pick the policy
        applies to also spends its verifiers' calls at its checked rate and the escalation model's call
        at its escalated rate, and that share of its requests is served by the escalation model. The
        choice itself is unchanged: the request path weighs only the pick's own cost."""
        table = self.rows(np.arange(len(self)))
        costs = {**self.priced_only, **{m: self.cost[:, j] for j, m in enumerate(self.models)}}
        spend, escalation = self.cost.copy(), np.zeros_like(self.cost)
        for j, pick in enumerate(self.models):
            extra, escalation[:, j] = expected_overhead(policy, rates, pick, self.quality[:, j], costs)
            spend[:, j] += extra
        table.spend, table.escalation = spend, escalation
        table.escalate_column = self.models.index(policy.escalate_to) if policy.escalate_to in self.models else None
        return table

    def real_cost_ratio(self, routed: Sequence[str | None], real_cost_usd: Sequence[float | None],
                        min_requests: int = 20) -> float | None:
        """Sum of the real costs of logged requests over the sum of what this table predicts serving
        the models routed to them spends (`spend`: with verification, its calls too); None with fewer
        than `min_requests` such requests. Price x predicted answer length misses what a deployment's
        real answers run to, and discounts such as cached prompt tokens; the ratio carries both from
        the log into an average-cost target."""
        column = {m: j for j, m in enumerate(self.models)}
        rows = [(i, column[m], float(c)) for i, (m, c) in enumerate(zip(routed, real_cost_usd, strict=True))
                if m in column and c is not None and np.isfinite(c) and c >= 0]
        predicted = sum(self.spend[i, j] for i, j, _ in rows)
        if len(rows) < min_requests or predicted <= 0:
            return None
        return sum(c for _, _, c in rows) / predicted

    def __len__(self) -> int:
        return len(self.quality)

    def utilities(self, preference: float | np.ndarray) -> np.ndarray:
        """(n, k) what `choose` maximises: quality - preference x cost / reference cost. `preference`:
        one for all requests, or one each (what logged requests were routed at)."""
        weight = np.asarray(preference, dtype=float)
        return self.quality - (weight[:, None] if weight.ndim else weight) * self.cost / self.top[:, None]

    def chosen(self, preference: float | np.ndarray) -> np.ndarray:
        """Column of the chosen candidate per request: the best score, ties to the cheaper model, then
        to the earlier candidate, as `choose` breaks them."""
        scores = self.utilities(preference)
        tied = scores == scores.max(axis=1, keepdims=True)
        return np.where(tied, self.cost, np.inf).argmin(axis=1)

    def average(self, preference: float, kind: TargetKind, model: str | None,
                exploration: Exploration = NO_EXPLORATION) -> float:
        """The average cost a request, or `model`'s share of requests, of what is served at `preference`;
        with exploration (routers/exploration.py) a share epsilon of requests is served by a model drawn
        uniformly from its pool instead of the choice."""
        if not len(self):
            return 0.0
        picked = self.chosen(preference)
        column = self.models.index(model) if model in self.models else None
        # (n, k): per request and choice, what serving it spends, or the share of it `model` serves
        value = self.cost_scale * self.spend if kind == "avg_cost" else self._served_by(column)
        chosen = float(value[np.arange(len(self)), picked].mean())
        if not exploration.active or len(self.models) < 2:
            return chosen
        pool = pool_mask(self.utilities(preference), self.cost, exploration)
        drawn = float(((value * pool).sum(1) / pool.sum(1)).mean())
        return (1.0 - exploration.epsilon) * chosen + exploration.epsilon * drawn

    def _served_by(self, column: int | None) -> np.ndarray:
        """(n, k): the share of each request `column`'s model serves if the choice is each candidate."""
        served = np.zeros_like(self.cost)
        if column is None:
            return served
        served[:, column] = 1.0 - self.escalation[:, column]
        if self.escalate_column == column:
            served += self.escalation
        return served

    def rows(self, index: np.ndarray) -> ChoiceTable:
        part = object.__new__(ChoiceTable)
        part.models, part.quality, part.cost, part.top = self.models, self.quality[index], self.cost[index], self.top[index]
        part.cost_scale = self.cost_scale
        part.spend, part.escalation = self.spend[index], self.escalation[index]
        part.priced_only = {m: c[index] for m, c in self.priced_only.items()}
        part.escalate_column = self.escalate_column
        return part


def calibrate_table(table: ChoiceTable, kind: TargetKind, target: float, model: str | None = None,
                    iterations: int = 30, exploration: Exploration = NO_EXPLORATION) -> CalibrationResult:
    """The smallest cost preference whose average (cost or model share) of what is served, exploration
    included, is at most `target`."""
    assert kind == "avg_cost" or model is not None, "a model share needs the model"

    def measure(preference: float) -> float:
        return table.average(preference, kind, model, exploration)

    values = [measure(lam) for lam in LAMBDA_GRID]
    below = [i for i, v in enumerate(values) if v <= target]
    if not below:  # even the cheapest choices stay above the target: the closest we can get
        i = int(np.argmin(values))
        return CalibrationResult(float(LAMBDA_GRID[i]), kind, target, values[i], len(table), model)
    first = below[0]
    if first == 0:
        return CalibrationResult(0.0, kind, target, values[0], len(table), model)
    low, high, achieved = float(LAMBDA_GRID[first - 1]), float(LAMBDA_GRID[first]), values[first]
    for _ in range(iterations):
        mid = (low + high) / 2
        value = measure(mid)
        if value <= target:
            high, achieved = mid, value
        else:
            low = mid
    return CalibrationResult(high, kind, target, achieved, len(table), model)


def calibrate_estimates(estimates: Sequence[QualityEstimate], prompt_tokens: Sequence[int],
                        candidates: list[Candidate], kind: TargetKind, target: float,
                        model: str | None = None, iterations: int = 30) -> CalibrationResult:
    return calibrate_table(ChoiceTable(estimates, prompt_tokens, candidates), kind, target, model, iterations)


def estimate_requests(router: Router, requests: Sequence[RoutingRequest], candidates: list[Candidate],
                      chunk: int | None = None) -> list[QualityEstimate]:
    """Every request's estimate: a learned router featurises them in batches (the same estimates as its
    per-request path, in less time), any other router one by one. `chunk` bounds a batch: a caller in a
    background thread of a server passes a small one, because one batch of thousands holds the GIL in
    single C calls for up to ~100 ms, stalling the thread that serves requests (bench/route_calibration.py)."""
    if not isinstance(router, LearnedRouter) or not requests:
        return [router.estimate(request, candidates) for request in requests]
    reference = router.reference_cost(candidates)
    size = chunk or len(requests)
    estimates = []
    for start in range(0, len(requests), size):
        quality, tokens = router.estimate_batch([r.prompt for r in requests[start:start + size]])
        estimates += [estimate_for(router.models, q, t, candidates, reference) for q, t in zip(quality, tokens, strict=True)]
    return estimates


def traffic_table(router: Router, requests: Sequence[RoutingRequest], candidates: list[Candidate],
                  chunk: int | None = None, also_priced: Sequence[Candidate] = ()) -> ChoiceTable:
    """The router's estimates of `requests` as a ChoiceTable; `chunk`: see `estimate_requests`."""
    estimates = estimate_requests(router, requests, candidates, chunk)
    return ChoiceTable(estimates, [r.prompt_tokens for r in requests], candidates, also_priced)


def calibrate_traffic(router: Router, requests: Sequence[RoutingRequest], candidates: list[Candidate],
                      kind: TargetKind, target: float, model: str | None = None, chunk: int | None = None,
                      exploration: Exploration = NO_EXPLORATION) -> CalibrationResult:
    return calibrate_with_holdout(traffic_table(router, requests, candidates, chunk), kind, target, model,
                                  exploration)


def calibrate_with_holdout(table: ChoiceTable, kind: TargetKind, target: float, model: str | None = None,
                           exploration: Exploration = NO_EXPLORATION) -> CalibrationResult:
    """Calibrate on all of the table's requests; `held_out_achieved` is what the odd-numbered requests
    get at the preference calibrated on the even-numbered ones. With `exploration` the target holds
    for what is served, explored requests included."""
    result = calibrate_table(table, kind, target, model, exploration=exploration)
    if len(table) < 2:
        return result
    half = calibrate_table(table.rows(np.arange(0, len(table), 2)), kind, target, model, exploration=exploration)
    held_out = table.rows(np.arange(1, len(table), 2)).average(half.cost_preference, kind, model, exploration)
    return replace(result, held_out_achieved=held_out)


def calibrate(router: Router, requests: Sequence[RoutingRequest], candidates: list[Candidate],
              kind: TargetKind, target: float, model: str | None = None) -> CalibrationResult:
    estimates = estimate_requests(router, requests, candidates)
    return calibrate_estimates(estimates, [r.prompt_tokens for r in requests], candidates, kind, target, model)
