"""Cost-aware choice among candidates, shared by every router and by the evaluation harness.

The cost term is cost_preference x predicted cost / reference cost. A learned router's reference is
fixed: the costliest candidate's cost on a typical request of its training traffic (`typical_cost`).
With one fixed reference the preference is a single exchange rate between quality and dollars for all
requests, which is what maximises average quality for an average-cost budget (a Lagrange multiplier):
money goes to the requests where it buys the most quality. Normalising per request instead (the
fallback, for routers without training traffic) spends as much on a cheap short request as on a
long one; measured on RouterBench's train split (3-fold), the fixed reference gives a higher AIQ
in every fold."""

from __future__ import annotations

from dataclasses import dataclass

from routers.base import Candidate, QualityEstimate

# Used when a router predicts no answer length for a model.
DEFAULT_OUTPUT_TOKENS = 256.0


@dataclass(frozen=True)
class RoutingDecision:
    model: str
    router_name: str
    router_version: str
    cost_preference: float
    scores: dict[str, float]  # model -> utility the choice maximised
    quality: dict[str, float]
    predicted_cost_usd: dict[str, float]
    propensity: float = 1.0  # P(model | request) under exploration (routers/exploration.py)
    explore_epsilon: float = 0.0
    explore_pool: tuple[str, ...] | None = None  # the models exploration could have drawn


def predicted_cost(candidate: Candidate, prompt_tokens: int, output_tokens: float) -> float:
    """At the prices of the prompt's length (a long prompt's tier, where the model has one)."""
    input_cost, output_cost = candidate.rates(prompt_tokens)
    return input_cost * prompt_tokens + output_cost * output_tokens


def typical_cost(candidates: list[Candidate], prompt_tokens: float, output_tokens: dict[str, float],
                 default_output_tokens: float = DEFAULT_OUTPUT_TOKENS) -> float:
    """The costliest candidate's cost for a request of `prompt_tokens` and its typical answer length."""
    return max(predicted_cost(c, round(prompt_tokens), output_tokens.get(c.model, default_output_tokens))
               for c in candidates)


def choose(estimate: QualityEstimate, candidates: list[Candidate], prompt_tokens: int,
           cost_preference: float, router_name: str, router_version: str) -> RoutingDecision:
    """argmax quality - cost_preference x cost / max cost. Ties go to the cheaper model."""
    assert candidates
    costs = {c.model: predicted_cost(c, prompt_tokens, estimate.output_tokens.get(c.model, DEFAULT_OUTPUT_TOKENS))
             for c in candidates}
    top = estimate.reference_cost_usd or max(costs.values()) or 1.0
    scores = {m: estimate.quality[m] - cost_preference * costs[m] / top for m in costs}
    model = max(costs, key=lambda m: (scores[m], -costs[m]))
    return RoutingDecision(model, router_name, router_version, cost_preference, scores,
                           dict(estimate.quality), costs)
