"""Off-policy evaluation: how another router would have done on a route group's logged traffic.

A route group serves each request with one model and logs what it got: feedback (`POST /v1/feedback`),
the real cost, and the served model's propensity (routers/exploration.py). Another router, or the same
one at another cost preference, would have picked another model on some of those requests, whose
outcome nobody saw. Its average outcome a request (quality, real cost) is estimated from the log:

- IPS: the outcomes of the requests where it picks the served model, weighted by 1 / propensity;
- SNIPS: the same, normalised by the sum of those weights (less variance, a little bias);
- DR, doubly robust, the headline: the router's own prediction for its pick, corrected wherever it
  picks the served model by how far the logged outcome fell from its prediction for that model,
  weighted by 1 / propensity. Unbiased where the propensities are right, however wrong the predictions;
  good predictions only narrow it;
- DM: the predictions alone, what the router believes of itself.

DR and IPS are means of one term a request, so their 95% intervals are mean +- 1.96 standard errors,
and two routers compare by the mean of their paired per-request differences.

Support: with exploration off, every propensity is 1, and a request on which the router would pick a
model other than the one served says nothing about its pick. IPS then counts it as zero, DR falls back
to the prediction there: `unsupported` is that share, and a group meant to be evaluated this way
should run with `explore_epsilon > 0`, which gives every model a propensity of at least epsilon / k,
or with `explore_among: m` every model among the m best by utility epsilon / m (the others none:
a router that picks one of those is unsupported there).

The estimators are a few lines of numpy. The library that bundles them, Open Bandit Pipeline, needs
Python < 3.10 from release 0.5 on, and its last release that installs here (0.4.1) pulls in pandas,
seaborn and matplotlib for them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959964


def epsilon_from_propensity(propensity: np.ndarray, pool_size: np.ndarray | int) -> np.ndarray:
    """Each request's epsilon, from the served model's propensity under epsilon-greedy over a pool of
    m models: the choice has 1 - eps + eps / m (> 1 / m), an explored one eps / m (<= 1 / m)."""
    p, m = np.minimum(propensity, 1.0), np.maximum(np.asarray(pool_size, dtype=float), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(p > 1.0 / m, (1.0 - p) * m / np.maximum(m - 1.0, 1.0), p * m)
    return np.clip(np.where(m > 1, rate, 0.0), 0.0, 1.0)


@dataclass(frozen=True)
class LoggedBandit:
    """A group's logged requests as a bandit log over `models` (columns)."""

    models: list[str]
    served: np.ndarray  # (n,) column of the served model
    propensity: np.ndarray  # (n,) P(served | request) under the policy that logged it
    quality: np.ndarray  # (n,) feedback
    cost_usd: np.ndarray  # (n,) real cost, NaN where unknown
    # (n,) column the logging router itself chose (before exploration), -1 where the log does not say
    # (an explored request logged without the router's scores); None: infer it from the propensities
    greedy: np.ndarray | None = None
    # (n, k) the models each request's exploration could draw (routers/exploration.py); None: all
    pool: np.ndarray | None = None
    epsilon: np.ndarray | None = None  # (n,) each request's epsilon; None: recover it from the propensity

    def __post_init__(self) -> None:
        n = len(self.served)
        assert all(len(a) == n for a in (self.propensity, self.quality, self.cost_usd))
        assert self.pool is None or self.pool.shape == (n, len(self.models))
        if n and (np.any(self.propensity <= 0) or np.any(self.propensity > 1 + 1e-9)):
            raise ValueError("propensities must lie in (0, 1]")

    def __len__(self) -> int:
        return len(self.served)

    def pool_sizes(self) -> np.ndarray:
        return self.pool.sum(axis=1) if self.pool is not None else np.full(len(self), len(self.models))

    def exploration_rates(self) -> np.ndarray:
        if self.epsilon is not None:
            return self.epsilon
        return epsilon_from_propensity(self.propensity, self.pool_sizes())

    def logging_choices(self) -> np.ndarray:
        """The logging router's own choice per request: given, or the served model wherever it was not
        explored away from it (its propensity is above 1 / pool size), else unknown (-1)."""
        if self.greedy is not None:
            return self.greedy
        return np.where((self.propensity > 1.0 / self.pool_sizes()) | (self.exploration_rates() <= 0), self.served, -1)

    def reachable(self) -> np.ndarray:
        """(n, k) the models the logging policy served each request with a positive probability: its
        choice, and its exploration pool where epsilon > 0."""
        n, k = len(self), len(self.models)
        pool = self.pool if self.pool is not None else np.ones((n, k), dtype=bool)
        out = pool & (self.exploration_rates() > 0)[:, None]
        choice = self.logging_choices()
        known = choice >= 0
        out[np.flatnonzero(known), choice[known]] = True
        return out


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, terms: np.ndarray) -> Interval:
        if len(terms) == 0:
            return cls(float("nan"), float("nan"), float("nan"))
        mean = float(terms.mean())
        half = Z95 * float(terms.std(ddof=1)) / np.sqrt(len(terms)) if len(terms) > 1 else float("inf")
        return cls(mean, mean - half, mean + half)


@dataclass(frozen=True)
class ValueEstimate:
    """One outcome's average a request under a policy, by each estimator."""

    dr: Interval
    ips: Interval
    snips: float
    dm: float
    requests: int  # with this outcome known

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(log: LoggedBandit, outcome: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isfinite(outcome))


def dr_terms(log: LoggedBandit, picks: np.ndarray, outcome: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per request with a known outcome: prediction for the pick + 1[pick served] / p x (outcome -
    prediction for the served model)."""
    rows = _rows(log, outcome)
    served = log.served[rows]
    match = picks[rows] == served
    correction = np.where(match, (outcome[rows] - predicted[rows, served]) / log.propensity[rows], 0.0)
    return predicted[rows, picks[rows]] + correction


def estimate_value(log: LoggedBandit, picks: np.ndarray, outcome: np.ndarray, predicted: np.ndarray
                   ) -> ValueEstimate:
    """A deterministic policy's (`picks`, a column per request) average `outcome` a request;
    `predicted` (n, k) is its model of the outcome of every column, for DR and DM."""
    rows = _rows(log, outcome)
    weights = np.where(picks[rows] == log.served[rows], 1.0 / log.propensity[rows], 0.0)
    observed = weights * outcome[rows]
    snips = float(observed.sum() / weights.sum()) if weights.sum() > 0 else float("nan")
    dm = float(predicted[rows, picks[rows]].mean()) if len(rows) else float("nan")
    return ValueEstimate(Interval.of(dr_terms(log, picks, outcome, predicted)), Interval.of(observed), snips, dm,
                         len(rows))


def paired_difference(log: LoggedBandit, picks: np.ndarray, baseline: np.ndarray, outcome: np.ndarray,
                      predicted: np.ndarray, baseline_predicted: np.ndarray) -> Interval:
    """DR estimate of policy minus baseline, request by request (each with its own predictions)."""
    return Interval.of(dr_terms(log, picks, outcome, predicted) - dr_terms(log, baseline, outcome, baseline_predicted))


@dataclass(frozen=True)
class PairedSupport:
    """What a difference between two policies rests on: it is zero wherever they pick alike, so all of
    it comes from the requests where they differ, and there from the outcomes the log holds of each
    one's pick; elsewhere from their predictions."""

    differ: float  # share of requests where the two pick differently
    outcomes: int  # of those, how many the log holds the policy's pick's outcome for
    baseline_outcomes: int  # and the baseline's
    # share of requests where they differ and either's pick could not have been served (pure prediction)
    unsupported: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def thin(self, min_outcomes: int = 30, min_share: float = 0.05) -> bool:
        return self.differ > 0 and (min(self.outcomes, self.baseline_outcomes) < min_outcomes
                                    or self.unsupported >= min_share)


def paired_support(log: LoggedBandit, picks: np.ndarray, baseline: np.ndarray) -> PairedSupport:
    if not len(log):
        return PairedSupport(0.0, 0, 0)
    differ = picks != baseline
    reach, rows = log.reachable(), np.arange(len(log))
    blind = differ & ~(reach[rows, picks] & reach[rows, baseline])
    return PairedSupport(float(differ.mean()), int((differ & (picks == log.served)).sum()),
                         int((differ & (baseline == log.served)).sum()), float(blind.mean()))


@dataclass(frozen=True)
class Support:
    agrees_with_served: float  # share of requests where the policy picks the served model
    # Share of requests where it picks another model than the logging router chose. There, its pick's
    # outcome is seen only where exploration happened to serve it, and its own predictions fill the
    # rest: predictions that are biased exactly there, since the logging router chose otherwise.
    differs_from_logging: float
    outcomes_where_it_differs: int  # how many of those requests the log holds its pick's outcome for
    unsupported: float  # share where its pick had propensity 0 under the logging policy
    effective_requests: float  # (sum w)^2 / sum w^2 of its importance weights: what IPS effectively averages

    def to_dict(self) -> dict:
        return asdict(self)

    def thin(self, min_share: float = 0.05, min_outcomes: int = 30) -> bool:
        """Whether the estimate rests mostly on the policy's own predictions: it routes at least
        `min_share` of requests differently, and the log holds fewer than `min_outcomes` outcomes there;
        or at least `min_share` go to models the logging policy could not have served (outside an
        `explore_among` pool), which no amount of traffic shows."""
        return (self.differs_from_logging >= min_share and self.outcomes_where_it_differs < min_outcomes
                or self.unsupported >= min_share)


def support(log: LoggedBandit, picks: np.ndarray) -> Support:
    if not len(log):
        return Support(float("nan"), float("nan"), 0, float("nan"), 0.0)
    match = picks == log.served
    differs = picks != log.logging_choices()
    weights = np.where(match, 1.0 / log.propensity, 0.0)
    squares = float((weights ** 2).sum())
    return Support(float(match.mean()), float(differs.mean()), int((differs & match).sum()),
                   float(np.mean(~log.reachable()[np.arange(len(log)), picks])),
                   float(weights.sum() ** 2 / squares) if squares > 0 else 0.0)
