"""What verifying short answers (routers/verify.py) gets on data that has every model's reply.

For each prompt and routed pick, the policy's steps are replayed on the recorded replies: verify the
pick if the policy applies and its reply is a short answer, serve it if the verifiers' replies agree,
else the escalation model's outcome; the cost is every call made. The operating points sweep the
cost preference (the router's picks) and the `below` threshold; `below` = 0 verifies nothing, so the
router's own points are among them.

Which verifiers: chosen on the training split only, from the routers' cross-fitted predictions there
(`choose_verifiers`): every ordered pair of models other than the escalation model, by AIQ."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from routers.data.table import RoutingData
from routers.metrics import aiq
from routers.verify import VerifyPolicy, under

BELOWS = np.array([0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0])


@dataclass(frozen=True)
class Replayed:
    """Per operating point and prompt: what the requests cost and scored; and which were checked."""

    settings: np.ndarray  # (P, 2): cost preference, below
    cost: np.ndarray  # (P, n) USD, every call made
    quality: np.ndarray  # (P, n)
    checked: np.ndarray  # (P, n) bool: a verifier was asked
    escalated: np.ndarray  # (P, n) bool

    def points(self) -> np.ndarray:
        """(P, 2): average cost, average quality."""
        return np.column_stack([self.cost.mean(axis=1), self.quality.mean(axis=1)])


def _verifier_columns(policy: VerifyPolicy, models: list[str]) -> np.ndarray:
    """(m, count) column of each pick's verifiers, -1 where it has fewer."""
    out = np.full((len(models), policy.count), -1, dtype=np.int64)
    for j, pick in enumerate(models):
        for k, name in enumerate(policy.verifiers_for(pick)):
            out[j, k] = models.index(name)
    return out


def replay(picks: np.ndarray, predicted_quality: np.ndarray, data: RoutingData, quality: np.ndarray,
           policy: VerifyPolicy, lambdas: np.ndarray, belows: np.ndarray = BELOWS) -> Replayed:
    """`picks` (L, n): the router's column per cost preference and prompt; `quality`: realised scores."""
    n = len(data)
    rows = np.arange(n)
    escalate = data.models.index(policy.escalate_to)
    verifiers = _verifier_columns(policy, data.models)
    answers = data.answers
    settings, costs, scores, checks, ups = [], [], [], [], []
    for lam, row in zip(lambdas, picks, strict=True):
        pick_answer = answers[rows, row]
        vcols = verifiers[row]  # (n, count)
        has = vcols >= 0
        safe = np.where(has, vcols, 0)
        agree = np.all(~has | (answers[rows[:, None], safe] == pick_answer[:, None]), axis=1)
        verify_cost = np.where(has, data.cost[rows[:, None], safe], 0.0).sum(axis=1)
        checkable = (row != escalate) & has.any(axis=1) & np.array([a is not None for a in pick_answer])
        predicted = predicted_quality[rows, row]
        for below in belows:
            checked = checkable & under(predicted, float(below))
            escalated = checked & ~agree
            settings.append((lam, below))
            costs.append(data.cost[rows, row] + np.where(checked, verify_cost, 0.0)
                         + np.where(escalated, data.cost[:, escalate], 0.0))
            scores.append(np.where(escalated, quality[:, escalate], quality[rows, row]))
            checks.append(checked)
            ups.append(escalated)
    return Replayed(np.array(settings), np.array(costs), np.array(scores), np.array(checks), np.array(ups))


def strongest_model(data: RoutingData, quality: np.ndarray) -> str:
    return data.models[int(np.argmax(quality.mean(axis=0)))]


def choose_verifiers(picks: np.ndarray, predicted_quality: np.ndarray, data: RoutingData, quality: np.ndarray,
                     lambdas: np.ndarray) -> tuple[VerifyPolicy, dict[str, float]]:
    """The ordered pair of verifiers whose replay has the best AIQ on this (training) data."""
    escalate_to = strongest_model(data, quality)
    reference = float(data.cost.mean(axis=0).max())
    scored: dict[str, float] = {}
    best: tuple[float, VerifyPolicy] | None = None
    others = [m for m in data.models if m != escalate_to]
    for pair in itertools.permutations(others, 2):
        policy = VerifyPolicy(pair, escalate_to)
        score = aiq(replay(picks, predicted_quality, data, quality, policy, lambdas).points(), reference)
        scored[" > ".join(pair)] = score
        if best is None or score > best[0]:
            best = (score, policy)
    assert best is not None
    return best[1], scored


@dataclass(frozen=True)
class VerifySetting:
    """Which router's picks are verified, by which policy, and how that policy was chosen."""

    router: str
    policy: VerifyPolicy
    chosen_on: dict[str, object]


def verify_summary(replayed: Replayed, setting: VerifySetting) -> dict[str, object]:
    policy = setting.policy
    return {
        "verify": {"verifiers": list(policy.verifiers), "escalate_to": policy.escalate_to, "count": policy.count,
                   "chosen_on": setting.chosen_on},
        "verify_points": [
            {"cost_preference": float(lam), "below": float(below), "cost": float(c), "quality": float(q),
             "checked": float(k), "escalated": float(e)}
            for (lam, below), c, q, k, e in zip(replayed.settings, replayed.cost.mean(axis=1),
                                                replayed.quality.mean(axis=1), replayed.checked.mean(axis=1),
                                                replayed.escalated.mean(axis=1), strict=True)],
    }
