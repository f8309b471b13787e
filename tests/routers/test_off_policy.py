"""Off-policy estimates of a router's value from a bandit log: a hand-computed case, epsilon recovered
from the propensities the real exploration step writes, and a simulated log whose true values are known,
where DR must land on them with predictions that are far off, and the predictions alone must not."""

from __future__ import annotations

import random

import numpy as np
import pytest

from routers.choice import RoutingDecision
from routers.exploration import Exploration, explore
from routers.off_policy import LoggedBandit, estimate_value, paired_difference, paired_support, support


def hand_log() -> LoggedBandit:
    return LoggedBandit(["a", "b"], np.array([0, 1, 0, 1]), np.array([0.9, 0.1, 0.5, 0.5]),
                        np.array([1.0, 0.0, 0.5, 1.0]), np.array([2.0, np.nan, 4.0, 1.0]))


PICKS = np.array([0, 0, 0, 1])
PREDICTED = np.array([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5], [0.3, 0.9]])


def test_the_estimators_on_a_hand_computed_log() -> None:
    value = estimate_value(hand_log(), PICKS, hand_log().quality, PREDICTED)
    # IPS terms: 1 / 0.9, 0 (it picks a, b was served), 0.5 / 0.5, 1 / 0.5
    assert value.ips.mean == pytest.approx((1 / 0.9 + 0 + 1 + 2) / 4)
    assert value.snips == pytest.approx((1 / 0.9 + 1 + 2) / (1 / 0.9 + 2 + 2))
    # DR terms: 0.8 + 0.2 / 0.9, 0.6 (prediction only), 0.5 + 0, 0.9 + 0.1 / 0.5
    terms = np.array([0.8 + 0.2 / 0.9, 0.6, 0.5, 1.1])
    assert value.dr.mean == pytest.approx(terms.mean())
    half = 1.959964 * terms.std(ddof=1) / 2
    assert (value.dr.low, value.dr.high) == (pytest.approx(terms.mean() - half), pytest.approx(terms.mean() + half))
    assert value.dm == pytest.approx(0.7) and value.requests == 4
    # the cost is unknown on the second request: it is left out of every cost estimate
    cost = estimate_value(hand_log(), PICKS, hand_log().cost_usd, np.full((4, 2), 2.0))
    assert cost.requests == 3
    assert cost.dr.mean == pytest.approx(np.mean([2 + 0 / 0.9, 2 + (4 - 2) / 0.5, 2 + (1 - 2) / 0.5]))
    assert cost.ips.mean == pytest.approx(np.mean([2 / 0.9, 4 / 0.5, 1 / 0.5]))


def test_support_and_exploration_rates() -> None:
    log = hand_log()
    # k = 2: 0.9 is a greedy pick at eps 0.2, 0.1 an explored one at 0.2, 0.5 either at eps 1
    assert log.exploration_rates() == pytest.approx([0.2, 0.2, 1.0, 1.0])
    s = support(log, PICKS)
    assert s.agrees_with_served == 0.75 and s.unsupported == 0.0
    # the logging router's own choice: served where not explored away (0.9), unknown elsewhere (-1)
    assert log.logging_choices().tolist() == [0, -1, -1, -1]
    assert s.differs_from_logging == 0.75 and s.outcomes_where_it_differs == 2
    told = LoggedBandit(log.models, log.served, log.propensity, log.quality, log.cost_usd, np.array([0, 0, 1, 1]))
    s = support(told, PICKS)  # told the logging choices: it differs on row 2 only, where a (its pick) was served
    assert s.differs_from_logging == 0.25 and s.outcomes_where_it_differs == 1 and not s.thin(min_outcomes=1)
    assert s.thin(min_outcomes=2) and not s.thin(min_share=0.3, min_outcomes=2)
    weights = np.array([1 / 0.9, 0, 2, 2])
    assert s.effective_requests == pytest.approx(weights.sum() ** 2 / (weights ** 2).sum())
    unexplored = LoggedBandit(["a", "b"], np.array([0, 1, 0, 1]), np.ones(4), np.ones(4), np.ones(4))
    assert support(unexplored, PICKS).unsupported == 0.25  # it picks a where b was served for sure
    # they differ on rows 1 (b served: the baseline's pick) and 2 (a served: the policy's)
    paired = paired_support(log, PICKS, np.array([0, 1, 1, 1]))
    assert (paired.differ, paired.outcomes, paired.baseline_outcomes) == (0.5, 1, 1)
    assert paired.thin(2) and not paired.thin(1)
    assert not paired_support(log, PICKS, PICKS).thin()  # alike everywhere: nothing rests on predictions
    with pytest.raises(ValueError, match="propensities"):
        LoggedBandit(["a"], np.array([0]), np.array([0.0]), np.ones(1), np.ones(1))


@pytest.mark.parametrize(("models", "epsilon"), [(2, 0.1), (3, 0.2), (4, 0.5)])
def test_epsilon_is_recovered_from_the_propensities_exploration_writes(models: int, epsilon: float) -> None:
    names = [f"m{j}" for j in range(models)]
    rng = random.Random(models)
    greedy = RoutingDecision("m0", "r", "v", 1.0, dict.fromkeys(names, 0.0), {}, {})
    served = [explore(greedy, epsilon, rng) for _ in range(300)]
    assert {d.model for d in served} == set(names)  # every model was explored
    log = LoggedBandit(names, np.array([names.index(d.model) for d in served]),
                       np.array([d.propensity for d in served]), np.ones(300), np.ones(300))
    assert log.exploration_rates() == pytest.approx(np.full(300, epsilon))


def test_exploring_among_the_best_two_supports_what_stays_in_the_pools() -> None:
    """Four models, exploration among each request's two best by the logging router's beliefs: DR lands
    on a candidate that picks within the pools; a pick outside them is unsupported, whatever the log."""
    rng, explorer, n = np.random.default_rng(5), random.Random(5), 4000
    names = ["a", "b", "c", "d"]
    truth = rng.uniform(0.1, 0.95, size=(n, 4))
    beliefs = np.clip(truth + rng.normal(0, 0.2, size=truth.shape), 0, 1)
    served, propensity, pool = np.zeros(n, dtype=int), np.zeros(n), np.zeros((n, 4), dtype=bool)
    for i in range(n):
        greedy = RoutingDecision(names[int(beliefs[i].argmax())], "r", "v", 0.0,
                                 dict(zip(names, beliefs[i], strict=True)), {}, dict.fromkeys(names, 1.0))
        decision = explore(greedy, Exploration(0.3, among=2), explorer)
        served[i], propensity[i] = names.index(decision.model), decision.propensity
        pool[i, [names.index(m) for m in decision.explore_pool or ()]] = True
    quality = (rng.random(n) < truth[np.arange(n), served]).astype(float)
    log = LoggedBandit(names, served, propensity, quality, np.full(n, np.nan), beliefs.argmax(axis=1), pool)
    assert log.exploration_rates() == pytest.approx(np.full(n, 0.3))  # recovered with the pool's size, 2
    in_pool = np.where(pool, truth, -1).argmax(axis=1)  # the truly better of each pool
    value = estimate_value(log, in_pool, quality, np.full((n, 4), 0.5))  # flat predictions: DR must correct
    true_value = truth[np.arange(n), in_pool].mean()
    assert value.dr.low <= true_value <= value.dr.high and abs(value.dm - true_value) > 0.1
    assert support(log, in_pool).unsupported == 0.0
    outside = np.where(pool, np.inf, truth).argmin(axis=1)  # never in the pool
    assert support(log, outside).unsupported == 1.0 and support(log, outside).thin()  # however long the log
    assert paired_support(log, outside, in_pool).unsupported == 1.0 and paired_support(log, outside, in_pool).thin()
    assert paired_support(log, in_pool, log.logging_choices()).unsupported == 0.0
    everywhere = LoggedBandit(names, served, propensity, quality, np.full(n, np.nan), beliefs.argmax(axis=1))
    assert support(everywhere, outside).unsupported == 0.0  # told nothing of pools, it assumes all models


def simulated(epsilon: float, n: int = 6000, seed: int = 0) -> tuple[LoggedBandit, np.ndarray, np.ndarray]:
    """Three models, ten kinds of request with known success rates; the logging router is greedy on
    noisy beliefs and explores through the real `explore`. Returns the log, the true success rate of
    every (request, model), and a candidate policy that differs from the logging one."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.1, 0.95, size=(10, 3))
    kinds = rng.integers(0, 10, size=n)
    truth = rates[kinds]
    beliefs = np.clip(truth + rng.normal(0, 0.15, size=truth.shape), 0, 1)
    explorer = random.Random(seed)
    names = ["a", "b", "c"]
    served, propensity = np.zeros(n, dtype=int), np.zeros(n)
    for i in range(n):
        greedy = RoutingDecision(names[int(beliefs[i].argmax())], "r", "v", 0.0,
                                 dict(zip(names, beliefs[i], strict=True)), {}, {})
        decision = explore(greedy, epsilon, explorer)
        served[i], propensity[i] = names.index(decision.model), decision.propensity
    quality = (rng.random(n) < truth[np.arange(n), served]).astype(float)
    log = LoggedBandit(names, served, propensity, quality, np.full(n, np.nan))
    candidate = truth.argmax(axis=1)  # the best model per kind: rarely what the noisy logger served
    return log, truth, candidate


def test_doubly_robust_lands_on_the_true_value_even_with_biased_predictions() -> None:
    log, truth, candidate = simulated(epsilon=0.2)
    true_value = truth[np.arange(len(log)), candidate].mean()
    biased = np.clip(truth + 0.2, 0, 1)  # every prediction 0.2 too high (capped)
    value = estimate_value(log, candidate, log.quality, biased)
    assert value.dm - true_value > 0.05  # the predictions alone are far off
    assert value.dr.low <= true_value <= value.dr.high and abs(value.dr.mean - true_value) < 0.03
    assert value.ips.low <= true_value <= value.ips.high and abs(value.snips - true_value) < 0.03
    good = estimate_value(log, candidate, log.quality, truth)
    assert good.dr.high - good.dr.low < value.dr.high - value.dr.low  # good predictions narrow the interval
    backing = support(log, candidate)
    assert backing.unsupported == 0.0 and backing.differs_from_logging > 0.2
    assert backing.outcomes_where_it_differs > 50 and not backing.thin()

    difference = paired_difference(log, candidate, log.served, log.quality, truth, truth)
    true_difference = true_value - truth[np.arange(len(log)), log.served].mean()
    assert difference.low <= true_difference <= difference.high and difference.low > 0
    same = paired_difference(log, candidate, candidate, log.quality, truth, truth)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)


def test_without_exploration_a_disagreeing_policy_is_unsupported_and_dr_is_its_predictions_there() -> None:
    log, truth, candidate = simulated(epsilon=0.0, n=2000)
    disagree = candidate != log.served
    s = support(log, candidate)
    assert s.unsupported == pytest.approx(disagree.mean()) and s.unsupported > 0.2
    assert s.differs_from_logging == s.unsupported and s.outcomes_where_it_differs == 0 and s.thin()
    value = estimate_value(log, candidate, log.quality, truth)
    rows = np.arange(len(log))
    terms = np.where(disagree, truth[rows, candidate], truth[rows, candidate] + log.quality - truth[rows, log.served])
    assert value.dr.mean == pytest.approx(terms.mean())
