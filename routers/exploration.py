"""Optional epsilon-greedy exploration on top of a routing decision.

With probability epsilon the model is drawn uniformly from a pool instead of the choice: every
candidate, or with `among = m` only the m with the best utilities (the choice among them). The
decision then carries the propensity of the model actually served,
P(served | request) = (1 - epsilon) [chosen] + epsilon / |pool| [in the pool], and the pool itself;
the gateway writes both into the outcome row, so retraining can weight logged traffic by
1 / propensity (routers/data/outcomes.py) and `pitstop eval router-logs` knows which models the log
could have shown (routers/off_policy.py).

Why a pool: uniform over k models gives each epsilon / k of the traffic, so with many models a
router that differs from the one in place by a model or two is seen a handful of times in a thousand
requests, while most of the exploration buys outcomes of models no reasonable router would pick,
at their price. The best few by utility are the choices a retrained router or a nearby cost
preference would make instead (bench/router_off_policy.py measures both)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

from routers.choice import RoutingDecision


@dataclass(frozen=True)
class Exploration:
    epsilon: float = 0.0
    among: int | None = None  # draw from the `among` best models by utility; None: all

    def __post_init__(self) -> None:
        assert 0.0 <= self.epsilon <= 1.0 and (self.among is None or self.among >= 2)

    def pool_size(self, models: int) -> int:
        return models if self.among is None else min(self.among, models)

    @property
    def active(self) -> bool:
        return self.epsilon > 0.0


NO_EXPLORATION = Exploration()


def utility_order(scores: dict[str, float], costs: dict[str, float]) -> list[str]:
    """Models best first, by the key `choose` maximises: utility, then the cheaper model."""
    return sorted(scores, key=lambda m: (-scores[m], costs.get(m, 0.0)))


def explore(decision: RoutingDecision, exploration: Exploration | float, rng: random.Random | None = None
            ) -> RoutingDecision:
    if not isinstance(exploration, Exploration):
        exploration = Exploration(exploration)
    models = list(decision.scores)
    if not exploration.active or len(models) < 2:
        return decision
    ranked = utility_order(decision.scores, decision.predicted_cost_usd)
    pool = ranked[:exploration.pool_size(len(models))]
    if decision.model not in pool:  # the choice always belongs (a tie the order broke the other way)
        pool = [decision.model, *pool[:-1]]
    rng = rng or random.Random()
    epsilon = exploration.epsilon
    served = rng.choice(pool) if rng.random() < epsilon else decision.model
    chosen = 1.0 - epsilon if served == decision.model else 0.0
    return replace(decision, model=served, propensity=chosen + epsilon / len(pool), explore_epsilon=epsilon,
                   explore_pool=tuple(pool))


def pool_mask(scores: np.ndarray, costs: np.ndarray, exploration: Exploration) -> np.ndarray:
    """(n, k) the models each request's exploration draws from, for many requests at once: the
    `among` best by utility (`scores`), ties to the cheaper and then the earlier model, as `choose`."""
    n, k = scores.shape
    size = exploration.pool_size(k)
    if size >= k:
        return np.ones((n, k), dtype=bool)
    order = np.lexsort((costs, -scores), axis=-1)[:, :size]
    mask = np.zeros((n, k), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask
