"""Off-policy evaluation on real outcomes: how close `pitstop eval router-logs` comes to what a router
it did not run would really have got, from a log another router served with exploration.

RouterBench scores every model on every prompt, with real costs, so what any router would get on the
test split is known. The logging router is the `pitstop` family trained on the train split; it serves
the 953 test prompts at cost preference 1.0, exploring with the gateway's epsilon-greedy step
(routers/exploration.py); each logged row has the served model's real score as its feedback (a missing
score counts 0, RouterBench's convention) and its real cost. Two route groups: all eleven models, and
three (Mistral-7B, Mixtral-8x7B, GPT-4), where each model gets a larger share of the exploration; the
eleven-model group also explores among only its three best models by utility (`explore_among: 3`). The
job's own code (gateway/router_logs.py: `group_log`, `evaluate_on_logs`) then estimates three routers, `pitstop` itself (the router in place),
logistic regression on the static encoder (a peer) and the zero router, at the logged preference, at 0.3
and 3.0, and each at the spend of the router in place. Two log sizes: the 953 prompts once (`--draws`
exploration draws per epsilon) and each prompt `--repeat` times (`--repeat-draws` draws), more traffic
of the same kinds. The truth is the full table's average over each router's picks. Reported per
setting: bias, RMSE and the 95% interval's coverage of DR, IPS and SNIPS, the predictions alone (DM),
and how often a difference from the router in place is called right (its interval excludes 0 on the
true side) or wrong.

    .venv/bin/python -m bench.router_off_policy     # ~15 min; bench/results/routers/off_policy.json
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from gateway.route_group_config import RouteGroup
from gateway.router_logs import Policy, evaluate_on_logs, group_log
from gateway.routing import GroupRouter, estimate_tokens
from routers.base import Candidate, QualityEstimate, RoutingRequest
from routers.calibration import ChoiceTable, estimate_requests
from routers.choice import RoutingDecision, choose
from routers.data.catalog import load_dataset
from routers.data.prices import fit_prices
from routers.encoder_store import load_or_distil
from routers.evaluate import candidates_for
from routers.exploration import Exploration, explore
from routers.families import build_router
from routers.learned import LearnedRouter
from routers.run_eval import PEER_STATIC_FEATURES, PITSTOP_FEATURES

OUT = RESULTS / "routers" / "off_policy.json"
EPSILONS = (0.0, 0.05, 0.1, 0.2)
POOL = 3  # groups larger than this also explore among their POOL best models (explore_among)
PREFERENCES: tuple[float | None, ...] = (None, 0.3, 3.0)  # None: as logged
LOG_PREFERENCE = 1.0
ESTIMATORS = ("dr", "ips", "snips", "dm")
# The route groups: all eleven models, and a three-model group of the usual shape (a small model, a
# mid-size open one, the strongest API model). The routers are trained on all eleven either way.
GROUPS: dict[str, list[str] | None] = {
    "11 models": None,
    "3 models": ["mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"]}


@dataclass
class FixedRouter:
    """A router's estimates of a fixed set of prompts, computed once: the job runs hundreds of times over
    the same prompts, and featurising them again each time would only repeat the same numbers."""

    name: str
    version: str
    estimates: dict[str, QualityEstimate]

    def estimate(self, request: RoutingRequest, candidates: list[Candidate]) -> QualityEstimate:
        return self.estimates[request.prompt]


def fixed(router: LearnedRouter, prompts: Sequence[str], candidates: list[Candidate]) -> FixedRouter:
    requests = [RoutingRequest(p, estimate_tokens(p)) for p in prompts]
    return FixedRouter(router.name, router.version,
                       dict(zip(prompts, estimate_requests(router, requests, candidates), strict=True)))


def logged_rows(greedy: list[RoutingDecision], prompts: Sequence[str], models: list[str], quality: np.ndarray,
                cost: np.ndarray, exploration: Exploration, seed: int) -> list[dict[str, Any]]:
    """The log a group serving `greedy` with `exploration` writes, as export rows."""
    rng = random.Random(seed)
    rows = []
    for i, (prompt, decision) in enumerate(zip(prompts, greedy, strict=True)):
        served = explore(decision, exploration, rng)
        j = models.index(served.model)
        rows.append({"route_group": "bench", "prompt": prompt, "model": served.model, "status": "ok",
                     "router_name": decision.router_name, "router_version": decision.router_version,
                     "router_scores": decision.scores,
                     "cost_preference": decision.cost_preference, "propensity": served.propensity,
                     "explore_epsilon": served.explore_epsilon if served.explore_pool else None,
                     "explore_pool": list(served.explore_pool) if served.explore_pool else None,
                     "quality": float(quality[i, j]), "cost_usd": float(cost[i, j])})
    return rows


def truth_of(router: FixedRouter, prompts: Sequence[str], candidates: list[Candidate], quality: np.ndarray,
             cost: np.ndarray) -> Callable[[float], tuple[float, float]]:
    """What the router's picks at a preference really score and cost on average (the full table)."""
    table = ChoiceTable([router.estimates[p] for p in prompts], [estimate_tokens(p) for p in prompts], candidates)
    rows = np.arange(len(prompts))

    def at(preference: float) -> tuple[float, float]:
        picks = table.chosen(preference)
        return float(quality[rows, picks].mean()), float(cost[rows, picks].mean())

    return at


def errors(estimates: list[dict], true: float, scale: float = 1.0) -> dict[str, float]:
    """Bias and RMSE of each estimator over the draws (divided by `scale`), DR's coverage and half-width."""
    out: dict[str, float] = {"true": true}
    for name in ESTIMATORS:
        values = np.array([e[name]["mean"] if isinstance(e[name], dict) else e[name] for e in estimates])
        out[f"{name}_bias"] = float((values - true).mean() / scale)
        out[f"{name}_rmse"] = float(np.sqrt(((values - true) ** 2).mean()) / scale)
    out["dr_coverage"] = float(np.mean([e["dr"]["low"] <= true <= e["dr"]["high"] for e in estimates]))
    out["dr_half_width"] = float(np.mean([(e["dr"]["high"] - e["dr"]["low"]) / 2 for e in estimates]) / scale)
    return out


def calls(differences: list[dict], true: float, thin: list[bool] | None = None) -> dict[str, float]:
    """How often a difference's interval excludes 0 on the true side (right) or the other, or at all
    where there is no difference (wrong); with `thin` (the job's flag that an estimate rests mostly on
    predictions), also among the draws not flagged."""
    low, high = np.array([d["low"] for d in differences]), np.array([d["high"] for d in differences])
    mean = np.array([d["mean"] for d in differences])
    above, below = low > 0, high < 0
    # with no true difference, an interval that excludes 0 either way is a wrong call
    right = above if true > 0 else below if true < 0 else np.zeros_like(above)
    wrong = below if true > 0 else above if true < 0 else above | below
    out = {"true": true, "dr_rmse": float(np.sqrt(((mean - true) ** 2).mean())),
           "coverage": float(np.mean((low <= true) & (true <= high))),
           "called_right": float(right.mean()), "called_wrong": float(wrong.mean())}
    if thin is not None:
        sound = ~np.array(thin)
        out["flagged_thin"] = float(1 - sound.mean())
        out["called_right_unflagged"] = float(right[sound].mean()) if sound.any() else float("nan")
        out["called_wrong_unflagged"] = float(wrong[sound].mean()) if sound.any() else float("nan")
    return out


def simulate(routers: list[FixedRouter], prompts: Sequence[str], candidates: list[Candidate], quality: np.ndarray,
             cost: np.ndarray, draws: int, repeat: int = 1, explorations: Sequence[Exploration] | None = None,
             preferences: Sequence[float | None] = PREFERENCES) -> list[dict[str, Any]]:
    """Every (exploration, preference) setting: the job's estimates over `draws` logs against the truth.
    A log holds every prompt `repeat` times (more traffic of the same kinds; the truth is unchanged).
    `routers[0]` serves the log and is the router in place."""
    models = [c.model for c in candidates]
    current = routers[0]
    tokens = [estimate_tokens(p) for p in prompts]
    greedy = [choose(current.estimates[p], candidates, t, LOG_PREFERENCE, current.name, current.version)
              for p, t in zip(prompts, tokens, strict=True)]
    group = GroupRouter(RouteGroup(name="bench", models=models, router=current.name), current, candidates,
                        {m: m for m in models}, cost_preference=LOG_PREFERENCE)
    policies = [Policy(r.name, r) for r in routers]
    truths = [truth_of(r, prompts, candidates, quality, cost) for r in routers]
    served = (list(prompts) * repeat, greedy * repeat, np.tile(quality, (repeat, 1)), np.tile(cost, (repeat, 1)))
    if explorations is None:
        explorations = [Exploration(e) for e in EPSILONS]
        explorations += [Exploration(e, POOL) for e in EPSILONS if e >= 0.1 and len(models) > POOL]
    results = []
    for exploration in explorations:
        reports: dict[float | None, list[dict]] = {p: [] for p in preferences}
        logged = []
        started = time.process_time()
        for draw in range(draws if exploration.active else 1):  # unexplored, every draw is the same log
            log = group_log(logged_rows(served[1], served[0], models, served[2], served[3], exploration, draw),
                            group)
            logged.append((float(log.bandit.quality.mean()), float(log.bandit.cost_usd.mean())))
            for preference in preferences:
                reports[preference].append(evaluate_on_logs(group, log, policies, preference))
        seconds = (time.process_time() - started) / max(1, len(logged) * len(preferences))
        quality_cost = np.mean(logged, axis=0)
        for preference, runs in reports.items():
            results.append({"requests": len(served[0]), **setting(routers, truths, exploration, preference, runs),
                            "logged_quality": float(quality_cost[0]), "logged_cost_usd": float(quality_cost[1]),
                            "job_cpu_s": seconds})
    return results


Truth = Callable[[float], tuple[float, float]]


def setting(routers: list[FixedRouter], truth: list[Truth], exploration: Exploration, preference: float | None,
            runs: list[dict]) -> dict[str, Any]:
    at = LOG_PREFERENCE if preference is None else preference
    truths = [t(at) for t in truth]
    out: dict[str, Any] = {"epsilon": exploration.epsilon, "explore_among": exploration.among,
                           "cost_preference": "as logged (1.0)" if preference is None else preference,
                           "draws": len(runs), "policies": []}
    for k, router in enumerate(routers):
        entries = [run["policies"][k] for run in runs]
        row: dict[str, Any] = {
            "router": router.name,
            "quality": errors([e["quality"] for e in entries], truths[k][0]),
            "cost": errors([e["cost_usd"] for e in entries], truths[k][1], scale=truths[k][1]),
            "unsupported": float(np.mean([e["unsupported"] for e in entries])),
            "differs_from_logging": float(np.mean([e["differs_from_logging"] for e in entries])),
            "outcomes_where_it_differs": float(np.mean([e["outcomes_where_it_differs"] for e in entries])),
            "effective_requests": float(np.mean([e["effective_requests"] for e in entries]))}
        if k:
            row["vs_current_quality"] = calls([e["vs_current"]["quality"] for e in entries],
                                              truths[k][0] - truths[0][0],
                                              [e["thin"] or e["vs_current"]["thin"] for e in entries])
        out["policies"].append(row)
    out["same_spend"] = same_spend(routers, truth, runs)
    return out


def same_spend(routers: list[FixedRouter], truth: list[Truth], runs: list[dict]) -> list[dict[str, Any]]:
    """Each router at the preference the job calibrated to the current router's spend, draw by draw:
    how far its true cost lands from the target, and whether its quality difference is called right."""
    rows = []
    for k, router in enumerate(routers):
        true_quality, true_cost, diffs, true_diffs, thin = [], [], [], [], []
        for run in runs:
            spend = run["same_spend"]
            q, c = truth[k](spend["policies"][k]["cost_preference"])
            true_quality.append(q)
            true_cost.append(c / spend["target_cost_usd"])
            if k:
                q0, _ = truth[0](spend["policies"][0]["cost_preference"])
                diffs.append(spend["policies"][k]["vs_current"]["quality"])
                thin.append(spend["policies"][k]["thin"] or spend["policies"][k]["vs_current"]["thin"])
                true_diffs.append(q - q0)
        row = {"router": router.name, "true_quality": float(np.mean(true_quality)),
               "true_cost_over_target": float(np.mean(true_cost)),
               "dr_quality_error": float(np.mean([run["same_spend"]["policies"][k]["quality"]["dr"]["mean"] - t
                                                  for run, t in zip(runs, true_quality, strict=True)]))}
        if k:
            decided = [calls([d], t) for d, t in zip(diffs, true_diffs, strict=True)]
            sound = [d for d, flagged in zip(decided, thin, strict=True) if not flagged]
            row["vs_current_quality"] = {
                "true_mean": float(np.mean(true_diffs)),
                "called_right": float(np.mean([d["called_right"] for d in decided])),
                "called_wrong": float(np.mean([d["called_wrong"] for d in decided])),
                "flagged_thin": float(np.mean(thin)),
                "called_right_unflagged": float(np.mean([d["called_right"] for d in sound])) if sound else float("nan"),
                "called_wrong_unflagged": float(np.mean([d["called_wrong"] for d in sound])) if sound else float("nan")}
        rows.append(row)
    return rows


def print_setting(result: dict[str, Any]) -> None:
    for row in result["policies"]:
        q, c = row["quality"], row["cost"]
        vs = row.get("vs_current_quality")
        print(f"{result.get('group', '')} n {result['requests']:5d} eps {result['epsilon']:.2f} "
              f"among {result['explore_among'] or 'all'} "
              f"pref {result['cost_preference']!s:16s} {row['router']:10s} quality "
              f"{q['true']:.3f}: DR bias {q['dr_bias']:+.4f} rmse {q['dr_rmse']:.4f} cover {q['dr_coverage']:.2f} "
              f"| IPS rmse {q['ips_rmse']:.4f} SNIPS {q['snips_rmse']:.4f} DM bias {q['dm_bias']:+.4f} | cost DR rmse "
              f"{c['dr_rmse']:.1%}" + (f" | vs current {vs['true']:+.4f}: right {vs['called_right']:.2f} wrong "
                                        f"{vs['called_wrong']:.2f} (flagged {vs['flagged_thin']:.2f}; unflagged: "
                                        f"wrong {vs['called_wrong_unflagged']:.2f})" if vs else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=100, help="exploration draws per epsilon, one pass of the prompts")
    parser.add_argument("--repeat", type=int, default=10, help="the larger log: each prompt this many times")
    parser.add_argument("--repeat-draws", type=int, default=20, help="exploration draws per epsilon, larger log")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = load_dataset("routerbench")
    train, test = data.split("train"), data.split("test")
    encoder = load_or_distil(None)
    prices = fit_prices(train)[0]
    trained = []
    for family, features in (("pitstop", PITSTOP_FEATURES), ("logistic", PEER_STATIC_FEATURES),
                             ("zero", PEER_STATIC_FEATURES)):
        started = time.perf_counter()
        trained.append(build_router(family, data.models, features, encoder).fit(train))
        print(f"{family}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    results = []
    for group, models in GROUPS.items():
        chosen = models or data.models
        columns = [data.models.index(m) for m in chosen]
        candidates = candidates_for(chosen, prices)
        routers = [fixed(router, test.prompts, candidates) for router in trained]
        quality, cost = np.nan_to_num(test.quality)[:, columns], test.cost[:, columns]
        for draws, repeat in ((args.draws, 1), (args.repeat_draws, args.repeat)):
            for result in simulate(routers, test.prompts, candidates, quality, cost, draws, repeat=repeat):
                results.append({"group": group, **result})
                print_setting(results[-1])
    report = {
        "command": command("bench.router_off_policy"), "machine": machine_info(),
        "data": f"RouterBench subset: routers trained on the train split; the log = the test split's {len(test)} "
                f"prompts served by pitstop at cost preference {LOG_PREFERENCE} with epsilon-greedy exploration, "
                "feedback = the served model's real score (missing = 0), real cost",
        "draws_per_epsilon": {"one pass": args.draws, f"{args.repeat} passes": args.repeat_draws},
        "results": results,
    }
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
