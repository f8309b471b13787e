"""Optional epsilon-greedy exploration on top of a routing decision.

With probability epsilon the model is drawn uniformly from the candidates; the decision then carries
the propensity of the model actually served, P(served | request) = (1 - epsilon) [greedy] + epsilon / n,
which the gateway writes into the outcome row so later training can weight logged traffic by
1 / propensity (routers/data/outcomes.py)."""

from __future__ import annotations

import random
from dataclasses import replace

from routers.choice import RoutingDecision


def explore(decision: RoutingDecision, epsilon: float, rng: random.Random | None = None) -> RoutingDecision:
    assert 0.0 <= epsilon <= 1.0
    models = list(decision.scores)
    if epsilon == 0.0 or len(models) < 2:
        return decision
    rng = rng or random.Random()
    served = rng.choice(models) if rng.random() < epsilon else decision.model
    greedy = 1.0 - epsilon if served == decision.model else 0.0
    return replace(decision, model=served, propensity=greedy + epsilon / len(models))
