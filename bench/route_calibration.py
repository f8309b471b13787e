"""Route-group calibration on real traffic: how close a budget set on logged requests lands on the
requests that come next, how much logged traffic it needs, and what one calibration run costs.

The gateway's own code path (gateway/route_calibration.py's `calibrate_group`, over a real
`GroupRouter` whose router is the `pitstop` family trained on RouterBench's train split) calibrates on
the last `window` "logged" requests: the first half of RouterBench's test prompts in a random order.
The second half is the traffic that follows. Targets are in the gateway's terms (the chosen model's
predicted cost, prompt tokens estimated from characters as the gateway does): an average cost a
request at 25 / 50 / 75% of GPT-4's, or 10 / 30 / 50% of requests on GPT-4. On the following half the
report gives that same figure, and what RouterBench says those choices really cost and scored. Five
random orders per setting. An average-cost target is calibrated twice: on the logged prompts alone
(predicted dollars), and on the log as the gateway has it, with the model that served each request (at
cost preference LOG_PREFERENCE) and its real RouterBench cost, which turns the target into real dollars
(`real_cost_ratio`); the second is judged by the following traffic's real cost.

Cost of a run: estimating 2,000 prompts with the router's batch path against one by one (as
`pitstop eval router` and the request path do), and the preference search vectorised (ChoiceTable)
against calling `choose` per request, side by side in one process; and what a run in a worker thread
does to the event loop that serves requests (how late a 1 ms sleep wakes, idle and during the run).

    .venv/bin/python -m bench.route_calibration     # ~4 min; bench/results/routers/calibration.json
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from gateway.route_calibration import CHUNK, calibrate_group
from gateway.route_group_config import GroupCalibration, RouteGroup
from gateway.routing import GroupRouter, estimate_tokens
from routers.base import Candidate, QualityEstimate, RoutingRequest
from routers.calibration import LAMBDA_GRID, ChoiceTable, TargetKind, estimate_requests
from routers.choice import choose
from routers.data.catalog import load_dataset
from routers.data.prices import fit_prices
from routers.encoder_store import load_or_distil
from routers.evaluate import candidates_for
from routers.families import build_router
from routers.learned import LearnedRouter
from routers.run_eval import PITSTOP_FEATURES
from storage.traffic import LoggedRequest

OUT = RESULTS / "routers" / "calibration.json"
SEEDS = range(5)
WINDOWS = (50, 100, 200, 476)
COST_SHARES = (0.25, 0.5, 0.75)  # of GPT-4's average cost a request
MODEL_SHARES = (0.1, 0.3, 0.5)  # of requests on GPT-4
SEARCH_EVALUATIONS = len(LAMBDA_GRID) + 30  # the grid, then 30 bisection steps
LOG_PREFERENCE = 1.0  # the preference the logged traffic was served at (the models whose real cost it shows)


def group_for(router: LearnedRouter, candidates: list[Candidate], calibration: GroupCalibration) -> GroupRouter:
    group = RouteGroup(name="bench", models=router.models, router="pitstop", calibrate=calibration)
    return GroupRouter(group, router, candidates, {m: m for m in router.models})


def follow_on(table: ChoiceTable, rows: np.ndarray, cost: np.ndarray, quality: np.ndarray, preference: float,
              kind: TargetKind, model: str | None) -> dict[str, float]:
    """What the following traffic gets at `preference`: the target's own (predicted) figure, and the
    chosen models' real cost and quality."""
    picked = table.chosen(preference)
    return {"predicted": table.average(preference, kind, model),
            "real_cost_usd": float(cost[rows, picked].mean()), "real_quality": float(quality[rows, picked].mean())}


def settings(gpt4: float, strongest: str) -> list[tuple[TargetKind, float, str, str | None]]:
    """The targets; `gpt4`: the strongest model's mean real cost a request on the training split."""
    return ([("avg_cost", share * gpt4, f"{share:.0%} of GPT-4's cost", None) for share in COST_SHARES]
            + [("model_share", share, f"{share:.0%} on GPT-4", strongest) for share in MODEL_SHARES])


def landing(router: LearnedRouter, candidates: list[Candidate], prompts: list[str], cost: np.ndarray,
            quality: np.ndarray, strongest: str, gpt4: float) -> list[dict]:
    requests = [RoutingRequest(p, estimate_tokens(p)) for p in prompts]
    estimates = estimate_requests(router, requests, candidates)
    table = ChoiceTable(estimates, [r.prompt_tokens for r in requests], candidates)
    # The log: each request as served at LOG_PREFERENCE, with that model's real RouterBench cost.
    served = table.chosen(LOG_PREFERENCE)
    log = [LoggedRequest(p, router.models[j], float(cost[i, j])) for i, (p, j) in enumerate(zip(prompts, served, strict=True))]
    half = len(prompts) // 2
    results = []
    for kind, target, label, model in settings(gpt4, strongest):
        for logged_as in (("prompts", "served") if kind == "avg_cost" else ("prompts",)):
            for window in WINDOWS:
                runs = []
                for seed in SEEDS:
                    order = np.random.default_rng(seed).permutation(len(prompts))
                    logged, following = order[:half][-window:], order[half:]
                    config = GroupCalibration(avg_cost_usd=target if kind == "avg_cost" else None,
                                              model_share=target if kind == "model_share" else None, model=model,
                                              min_requests=1, window=window)
                    group = group_for(router, candidates, config)
                    traffic = [log[i] if logged_as == "served" else LoggedRequest(prompts[i]) for i in logged]
                    state = calibrate_group(group, traffic)
                    after = follow_on(table.rows(following), following, cost, quality, state.cost_preference, kind,
                                      model)
                    runs.append({"seed": seed, "cost_preference": state.cost_preference, "achieved": state.achieved,
                                 "held_out_half": state.held_out_achieved,
                                 "real_over_predicted": state.real_over_predicted, "following": after})
                results.append(summary(kind, target, label, logged_as, window, runs))
    return results


def summary(kind: TargetKind, target: float, label: str, logged_as: str, window: int, runs: list[dict]) -> dict:
    predicted = np.array([r["following"]["predicted"] for r in runs])
    real = np.array([r["following"]["real_cost_usd"] for r in runs])
    # the figure the target is on: a share, the predicted cost (prompts alone), or the real cost
    landed = real if logged_as == "served" else predicted
    row = {"kind": kind, "target": target, "label": label, "logged": logged_as, "window": window, "runs": runs,
           "following_predicted_mean": float(predicted.mean()), "following_real_cost_usd_mean": float(real.mean()),
           "following_real_quality_mean": float(np.mean([r["following"]["real_quality"] for r in runs])),
           "held_out_half_mean_abs_error": float(np.mean([abs(r["held_out_half"] / target - 1) for r in runs])),
           "following_over_target_mean_abs_error": float(np.mean(np.abs(landed / target - 1))),
           "following_over_target_worst": float(np.max(np.abs(landed / target - 1)))}
    if kind == "avg_cost":
        row["following_real_over_target_mean"] = float(np.mean(real / target))
    print(f"{label:22s} log: {logged_as:7s} window {window:4d}: following traffic {landed.mean():.4g} (target "
          f"{target:.4g}), mean |error| {row['following_over_target_mean_abs_error']:.1%}, worst "
          f"{row['following_over_target_worst']:.1%}" + (f"; real cost / target {row['following_real_over_target_mean']:.3f}"
                                                         if kind == "avg_cost" else ""), flush=True)
    return row


def _search_with_choose(estimates: list[QualityEstimate], tokens: list[int], candidates: list[Candidate]) -> None:
    for preference in np.linspace(0.0, 10.0, SEARCH_EVALUATIONS):
        [choose(e, candidates, t, float(preference), "bench", "0") for e, t in zip(estimates, tokens, strict=True)]


def run_cost(router: LearnedRouter, candidates: list[Candidate], prompts: list[str]) -> dict[str, float]:
    requests = [RoutingRequest(p, estimate_tokens(p)) for p in prompts]
    tokens = [r.prompt_tokens for r in requests]
    timings: dict[str, float] = {"requests": len(requests)}
    start = time.process_time()
    estimates = estimate_requests(router, requests, candidates)
    timings["estimate_batch_cpu_s"] = time.process_time() - start
    start = time.process_time()
    estimate_requests(router, requests, candidates, chunk=CHUNK)
    timings["estimate_chunks_of_16_cpu_s"] = time.process_time() - start  # what the gateway runs
    start = time.process_time()
    one_by_one = [router.estimate(r, candidates) for r in requests]
    timings["estimate_one_by_one_cpu_s"] = time.process_time() - start
    timings["max_abs_quality_difference"] = max(abs(a.quality[m] - b.quality[m]) for a, b in
                                                zip(estimates, one_by_one, strict=True) for m in a.quality)
    start = time.process_time()
    table = ChoiceTable(estimates, tokens, candidates)
    for preference in np.linspace(0.0, 10.0, SEARCH_EVALUATIONS):
        table.average(float(preference), "avg_cost", None)
    timings["search_vectorised_cpu_s"] = time.process_time() - start
    start = time.process_time()
    _search_with_choose(estimates, tokens, candidates)
    timings["search_choose_per_request_cpu_s"] = time.process_time() - start
    timings["batch_speedup"] = timings["estimate_one_by_one_cpu_s"] / timings["estimate_batch_cpu_s"]
    timings["search_speedup"] = timings["search_choose_per_request_cpu_s"] / timings["search_vectorised_cpu_s"]
    print(f"{len(requests)} requests: estimate batch {timings['estimate_batch_cpu_s']:.2f} s CPU, in chunks of "
          f"{CHUNK} {timings['estimate_chunks_of_16_cpu_s']:.2f} s, one by one "
          f"{timings['estimate_one_by_one_cpu_s']:.2f} s; search vectorised {timings['search_vectorised_cpu_s']:.3f} s,"
          f" with choose {timings['search_choose_per_request_cpu_s']:.2f} s", flush=True)
    return timings


async def _loop_lags(work: Callable[[], object] | None, idle_s: float) -> list[float]:
    """How late 1 ms sleeps on the event loop wake, while `work` runs in a worker thread (as the gateway
    runs a calibration) or, without work, for `idle_s`."""
    lags: list[float] = []
    running = asyncio.ensure_future(asyncio.to_thread(work)) if work is not None else None
    end = time.perf_counter() + idle_s
    while (running is not None and not running.done()) or (running is None and time.perf_counter() < end):
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - start - 0.001)
    if running is not None:
        await running
    return lags


def loop_lag(router: LearnedRouter, candidates: list[Candidate], prompts: list[str]) -> dict[str, object]:
    """What a calibration run over `prompts` in a worker thread does to the gateway's event loop."""
    config = GroupCalibration(avg_cost_usd=1e-3, min_requests=1, window=len(prompts))
    group = group_for(router, candidates, config)
    idle = asyncio.run(_loop_lags(None, idle_s=3.0))
    during = asyncio.run(_loop_lags(lambda: calibrate_group(group, [LoggedRequest(p) for p in prompts]), idle_s=0.0))

    def summary(lags: list[float]) -> dict[str, float]:
        ms = np.array(lags) * 1e3
        return {"wakeups": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                "max_ms": float(ms.max())}

    result = {"requests": len(prompts), "idle": summary(idle), "during_calibration": summary(during)}
    print(f"event-loop lag of a 1 ms sleep, idle / during a calibration over {len(prompts)} requests: p99 "
          f"{result['idle']['p99_ms']:.2f} / {result['during_calibration']['p99_ms']:.2f} ms, max "
          f"{result['idle']['max_ms']:.2f} / {result['during_calibration']['max_ms']:.2f} ms", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = load_dataset("routerbench")
    train, test = data.split("train"), data.split("test")
    start = time.perf_counter()
    router = build_router("pitstop", data.models, PITSTOP_FEATURES, load_or_distil(None)).fit(train)
    print(f"trained the pitstop router on {len(train)} prompts in {time.perf_counter() - start:.0f} s", flush=True)
    candidates = candidates_for(data.models, fit_prices(train)[0])
    real_cost = np.nanmean(train.cost, axis=0)
    strongest = data.models[int(np.nanargmax(real_cost))]
    report = {
        "command": command("bench.route_calibration"), "machine": machine_info(),
        "data": "RouterBench subset: the pitstop router trained on the train split; traffic = the test split's "
                f"{len(test)} prompts, first half logged, second half following, five random orders",
        "strongest": strongest, "strongest_mean_real_cost_usd_train": float(real_cost.max()),
        "landing": landing(router, candidates, test.prompts, test.cost, np.nan_to_num(test.quality), strongest,
                           float(real_cost.max())),
        "run_cost": run_cost(router, candidates, train.prompts[:2000]),
        "event_loop_lag": loop_lag(router, candidates, train.prompts[:2000]),
    }
    print(f"wrote {write_report(args.out, report)}")


if __name__ == "__main__":
    main()
