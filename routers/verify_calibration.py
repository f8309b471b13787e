"""Does a route group that verifies its picks land on its budget? Measured on data with every model's
reply, where verification replays exactly (routers/verify_eval.py).

The gateway's loop (gateway/route_calibration.py), on two halves of the evaluation prompts taking
turns: the group serves one half at its preference and logs it (each pick's verify outcome, every
call's real cost); it calibrates an average-cost target on that log; the other half is then served at
the new preference, and its real spend, verifiers and escalations included, is compared with the
target; that half's log is the next round's. Two calibrations side by side, each in its own loop:
counting only the routed pick's cost, scaled by real over predicted cost of the served models (the
gateway until stop 26), and counting verification at the logged rates (`ChoiceTable.verified`, the
gateway now)."""

from __future__ import annotations

from typing import Any

import numpy as np

from routers.calibration import ChoiceTable, calibrate_table
from routers.data.table import Prices, RoutingData
from routers.evaluate import Predictions, candidates_for, realised, reference_cost
from routers.learned import estimate_for
from routers.verify import VerifyPolicy, VerifyRates, under
from routers.verify_eval import replay


def _served(table: ChoiceTable, preference: float, pred: Predictions, data: RoutingData,
            policy: VerifyPolicy) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Per prompt at `preference`: the pick's column, the real cost of every call, the verify outcome."""
    picks = table.chosen(preference)
    quality = realised(data, "zero")
    done = replay(picks[None], pred.quality, data, quality, policy, np.array([preference]), np.array([policy.below]))
    escalate = data.models.index(policy.escalate_to)
    applies = (picks != escalate) & under(pred.quality[np.arange(len(data)), picks], policy.below)
    outcomes = [None if not a else "escalated" if e else "accepted" if c else "unchecked"
                for a, c, e in zip(applies, done.checked[0], done.escalated[0], strict=True)]
    return picks, done.cost[0], outcomes


Method = str  # "pick_cost_only" | "verify_counted"


def _calibrated(method: Method, fit: ChoiceTable, log: tuple[np.ndarray, np.ndarray, list[str | None]],
                data: RoutingData, policy: VerifyPolicy, target: float) -> float:
    """The preference `method` sets for `target` from a logged half."""
    picks, real, outcomes = log
    routed = [data.models[j] for j in picks]
    if method == "verify_counted":
        table = fit.verified(policy, VerifyRates.from_outcomes(routed, outcomes))
        table.cost_scale = table.real_cost_ratio(routed, real.tolist()) or 1.0
    else:
        served = np.where(np.array(outcomes) == "escalated", data.models.index(policy.escalate_to), picks)
        table = fit.rows(np.arange(len(fit)))
        table.cost_scale = float(real.sum() / fit.cost[np.arange(len(fit)), served].sum())
    return calibrate_table(table, "avg_cost", target).cost_preference


def calibration_with_verify(pred: Predictions, data: RoutingData, prices: Prices, policy: VerifyPolicy,
                            targets: dict[str, float], first_preference: float = 1.0,
                            rounds: int = 6) -> dict[str, Any]:
    """Per average-cost target (USD a request, by name) and method: each round's held-out spend over
    the target, their mean and mean absolute error."""
    candidates = candidates_for(data.models, prices)
    reference = reference_cost(data, candidates)
    halves = []
    for rows in (np.arange(0, len(data), 2), np.arange(1, len(data), 2)):
        part = data.subset(rows)
        estimates = [estimate_for(data.models, pred.quality[i], pred.output_tokens[i], candidates, reference)
                     for i in rows]
        halves.append((part, Predictions(pred.name, pred.quality[rows], pred.output_tokens[rows]),
                       ChoiceTable(estimates, [max(int(t), 1) for t in part.prompt_tokens], candidates)))
    report: dict[str, Any] = {"protocol": __doc__.split("\n\n")[1].replace("\n", " "), "rounds": rounds,
                              "first_preference": first_preference, "targets": {}}
    for name, target in targets.items():
        per_method = {}
        for method in ("pick_cost_only", "verify_counted"):
            preference, ratios, escalated = first_preference, [], []
            for r in range(rounds):
                logged, served = halves[r % 2], halves[(r + 1) % 2]
                log = _served(logged[2], preference, logged[1], logged[0], policy)
                preference = _calibrated(method, logged[2], log, logged[0], policy, target)
                _, spent, outcomes = _served(served[2], preference, served[1], served[0], policy)
                ratios.append(float(spent.mean() / target))
                escalated.append(float(np.mean([o == "escalated" for o in outcomes])))
            per_method[method] = {"held_out_over_target": ratios, "mean": float(np.mean(ratios)),
                                  "mean_abs_error": float(np.mean(np.abs(np.array(ratios) - 1))),
                                  "escalated": escalated, "last_preference": preference}
        report["targets"][name] = {"target_usd": target, **per_method}
    return report
