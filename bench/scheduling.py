"""Shortest-predicted-first scheduling against FCFS and the true-length oracle.

    .venv/bin/python -m bench.scheduling [--requests 6000] [--rates R,R] [--torch-requests 2000] [--torch-windows 5] [--skip-torch]
        [--ranker ARTIFACT]

Arrivals: the Azure 2023 conversation trace, rescaled to several mean rates up to past saturation.
Requests: AlpacaEval / GSM8K / RouterBench prompts held out from the ranker's training, with one
model's real answer lengths (bench/scheduling_workload.py); rank scores from the committed ranker.
Simulated: the real engine (scheduler, block manager) on the Llama-3.1-8B / H100 roofline. Torch: a
tiny model on CPU at small scale, over several trace windows, each with a noise-free simulated twin
(bench/scheduling_torch.py). Policies: FCFS, Pitstop's rank policy
(engine/rank_policy.py, default horizon) on the gateway's default score, expected work (prompt plus
answer, rankers/work.py), the same without aging, the same key on the answer-length score alone
(`rank-answer-only`, what Pitstop sent before stop 20), and the oracle (true answer lengths, shortest
remaining answer first; `oracle-work`: least true remaining work first, prompt plus answer). Writes bench/results/scheduling.json and PNG plots beside it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info  # noqa: E402
from bench.scheduling_workload import (  # noqa: E402
    TRACE,
    WORKLOADS,
    OracleRemainingPolicy,
    OracleWorkPolicy,
    answer_only,
    arrivals,
    held_out_requests,
    ranker_facts,
    trace_times,
)
from engine.llm_engine import LLMEngine  # noqa: E402
from engine.policy import FCFSPolicy, SchedulingPolicy  # noqa: E402
from engine.rank_policy import DEFAULT_HORIZON_S, RankPolicy  # noqa: E402
from engine.roofline import RooflineStepTime  # noqa: E402
from engine.simulate import make_sim_engine, simulate  # noqa: E402

OUT = RESULTS / "scheduling.json"
RATES = {"mixed-mixtral": [60, 100, 130, 150, 170, 200, 240], "alpaca-llama3-8b": [30, 45, 55, 65, 80, 100]}
HORIZONS = [0.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 1e9]
CLIENT_TIMEOUT_S = 60.0
NO_AGING = 1e9  # a horizon longer than any run: pure shortest-predicted-first
TORCH_HORIZON_S = 1.0
TORCH_LOADS = (0.8, 1.0, 1.2)


def policies(horizon_s: float = DEFAULT_HORIZON_S) -> dict[str, SchedulingPolicy]:
    return {"fcfs": FCFSPolicy(), "rank": RankPolicy(horizon_s), "rank-no-aging": RankPolicy(NO_AGING),
            "rank-answer-only": RankPolicy(horizon_s), "oracle": OracleRemainingPolicy(),
            "oracle-work": OracleWorkPolicy()}


ANSWER_ONLY = "rank-answer-only"  # runs on the requests' answer scores (bench/scheduling_workload.answer_only)


def summary(latency: list[float], ttft: list[float]) -> dict[str, float]:
    lat, first = np.asarray(latency), np.asarray(ttft)
    return {"mean_s": float(lat.mean()), "p50_s": float(np.percentile(lat, 50)),
            "p90_s": float(np.percentile(lat, 90)), "p99_s": float(np.percentile(lat, 99)), "max_s": float(lat.max()),
            "ttft_mean_s": float(first.mean()), "ttft_p90_s": float(np.percentile(first, 90)),
            "ttft_p99_s": float(np.percentile(first, 99)), "requests": len(lat)}


def run_sim(policy: SchedulingPolicy, times: np.ndarray, pools: list, rate: float,
            prepare: Callable[[LLMEngine], None] | None = None) -> dict[str, float]:
    """One replay on the simulated H100; `prepare` may adjust the fresh engine before it runs."""
    engine = make_sim_engine(RooflineStepTime.builtin("llama-3.1-8b", "H100-SXM"), policy=policy)
    if prepare is not None:
        prepare(engine)
    results = simulate(engine, arrivals(times, pools, rate))
    assert all(r.finish_reason == "length" for r in results), "a request was rejected"
    out = summary([r.latency for r in results], [r.ttft for r in results])
    last_arrival = max(r.arrival_time for r in results)
    out |= {"makespan_s": max(r.finish_time for r in results), "last_arrival_s": last_arrival,
            "preemptions": sum(r.num_preemptions for r in results)}
    return out


def keeps_up(row: dict[str, float]) -> bool:
    """FCFS "completes the trace" at a load when every request finishes within a 60 s client timeout
    (in the simulator nothing times out, so past that point FCFS would lose requests)."""
    return row["max_s"] <= CLIENT_TIMEOUT_S


def headline(by_rate: list[dict]) -> dict | None:
    sustainable = [r for r in by_rate if keeps_up(r["policies"]["fcfs"])]
    if not sustainable:
        return None
    top = max(sustainable, key=lambda r: r["rate"])
    p = top["policies"]
    return {"rate": top["rate"], "fcfs_over_rank_mean": p["fcfs"]["mean_s"] / p["rank"]["mean_s"],
            "rank_over_oracle_mean": p["rank"]["mean_s"] / p["oracle"]["mean_s"],
            "fcfs_over_oracle_mean": p["fcfs"]["mean_s"] / p["oracle"]["mean_s"],
            "rank_p99_over_fcfs_p99": p["rank"]["p99_s"] / p["fcfs"]["p99_s"],
            "no_aging_over_oracle_mean": p["rank-no-aging"]["mean_s"] / p["oracle"]["mean_s"],
            "no_aging_p99_over_fcfs_p99": p["rank-no-aging"]["p99_s"] / p["fcfs"]["p99_s"],
            "fcfs_over_answer_only_mean": p["fcfs"]["mean_s"] / p[ANSWER_ONLY]["mean_s"],
            "fcfs_over_oracle_work_mean": p["fcfs"]["mean_s"] / p["oracle-work"]["mean_s"],
            "rank_over_oracle_work_mean": p["rank"]["mean_s"] / p["oracle-work"]["mean_s"],
            "answer_only_p99_over_fcfs_p99": p[ANSWER_ONLY]["p99_s"] / p["fcfs"]["p99_s"]}


def simulated(workload: str, times: np.ndarray, rates: list[float], ranker: Path | None = None) -> dict:
    pools = held_out_requests(workload, ranker)
    answer_pools = answer_only(pools)
    by_rate = []
    for rate in rates:
        row = {"rate": rate, "policies": {}}
        for name, policy in policies().items():
            row["policies"][name] = run_sim(policy, times, answer_pools if name == ANSWER_ONLY else pools, rate)
        by_rate.append(row)
        fc, rk = row["policies"]["fcfs"], row["policies"]["rank"]
        print(f"{workload} rate={rate}: fcfs mean {fc['mean_s']:.2f}s, rank {rk['mean_s']:.2f}s, "
              f"oracle {row['policies']['oracle']['mean_s']:.2f}s", flush=True)
    top = headline(by_rate)
    sweep_rate = top["rate"] if top else rates[-1]
    sweep = [{"horizon_s": h, **run_sim(RankPolicy(h), times, pools, sweep_rate)} for h in HORIZONS]
    answer_sweep = [{"horizon_s": h, **run_sim(RankPolicy(h), times, answer_pools, sweep_rate)} for h in HORIZONS]
    lengths = [r.output_tokens for pool in pools for r in pool]
    return {"workload": workload, "sources": WORKLOADS[workload][0], "model": WORKLOADS[workload][1],
            "pool_prompts": sum(len(p) for p in pools), "mean_output_tokens": float(np.mean(lengths)),
            "output_tokens_cv": float(np.std(lengths) / np.mean(lengths)), "by_rate": by_rate,
            "headline": top, "horizon_sweep": {"rate": sweep_rate, "runs": sweep, "answer_only_runs": answer_sweep}}


def torch_part(requests: int, windows: int, horizon_s: float, ranker: Path | None = None) -> dict:
    """The torch runner over `windows` consecutive windows of `requests` trace arrivals each (its own
    prompt draw and measured capacity per window). One short replay near saturation is dominated by a
    few bursts and by timing noise, so the direction is read from all windows: per load, the mean of
    the windows' statistics and the windows in which rank beat FCFS."""
    import torch  # noqa: PLC0415

    from bench.scheduling_torch import (  # noqa: PLC0415
        TinyEngineFactory,
        replay,
        shrunk_work_pools,
        torch_policies,
        torch_workload,
    )

    torch.set_num_threads(1)
    all_times = trace_times(requests * windows)
    pools = shrunk_work_pools(held_out_requests("mixed-mixtral", ranker))
    factory = TinyEngineFactory()
    out: dict = {"requests_per_window": requests, "windows": [], "horizon_s": horizon_s, "loads": list(TORCH_LOADS)}
    try:
        for window in range(windows):
            workload = torch_workload(all_times[window * requests:(window + 1) * requests], pools, requests,
                                      seed=window)
            span = workload[-1].arrival_s
            # Capacity first: every request at once under FCFS; loads are fractions of it.
            burst = replay(factory, FCFSPolicy(), [r.__class__(0.0, r.prompt, r.output_tokens, r.rank_score)
                                                   for r in workload], 1.0)
            capacity = requests / max(burst["latency"])
            if window == 0:  # warm-up: every batch shape once, unmeasured; then this engine's step times
                for policy in torch_policies(horizon_s).values():
                    replay(factory, policy, workload, capacity / (requests / span))
                step_time = factory.fit_step_time(workload)
                out["twin_step_time"] = asdict(step_time)
            burst_sim = factory.simulated_replay(step_time, FCFSPolicy(), workload, 1e9)
            twin_capacity = requests / max(burst_sim["latency"])
            row = {"window": window, "capacity_req_per_cpu_s": capacity, "twin_capacity_req_per_s": twin_capacity,
                   "by_load": [], "twin_by_load": []}
            for load in TORCH_LOADS:
                scale, twin_scale = (load * c / (requests / span) for c in (capacity, twin_capacity))
                cell = {"load": load, "policies": {}}
                twin = {"load": load, "policies": {}}
                for name, policy in torch_policies(horizon_s).items():
                    run = replay(factory, policy, workload, scale)
                    cell["policies"][name] = summary(run["latency"], run["ttft"]) | {
                        "longest_step_s": run["longest_step_s"][0]}
                    twin["policies"][name] = summary(**factory.simulated_replay(step_time, policy, workload,
                                                                                twin_scale))
                row["by_load"].append(cell)
                row["twin_by_load"].append(twin)
                for label, c in (("torch", cell), ("twin", twin)):
                    print(f"{label} window={window} load={load}: "
                          + ", ".join(f"{k} {v['mean_s']:.3f}s" for k, v in c["policies"].items()), flush=True)
            out["windows"].append(row)
    finally:
        factory.close()
    out["by_load"] = [_pooled([w["by_load"] for w in out["windows"]], i) for i in range(len(TORCH_LOADS))]
    out["twin_by_load"] = [_pooled([w["twin_by_load"] for w in out["windows"]], i) for i in range(len(TORCH_LOADS))]
    return out


def _pooled(windows: list[list[dict]], index: int) -> dict:
    """One load over all windows: each statistic averaged over the windows, and rank's wins."""
    cells = [w[index] for w in windows]
    names = cells[0]["policies"].keys()
    policies_ = {name: {key: float(np.mean([c["policies"][name][key] for c in cells]))
                        for key in cells[0]["policies"][name]} for name in names}
    return {"load": cells[0]["load"], "policies": policies_,
            "rank_mean_below_fcfs_windows": sum(c["policies"]["rank"]["mean_s"] < c["policies"]["fcfs"]["mean_s"]
                                                for c in cells),
            "rank_p99_at_or_below_fcfs_windows": sum(
                c["policies"]["rank"]["p99_s"] <= c["policies"]["fcfs"]["p99_s"] for c in cells),
            "windows": len(cells)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000, help="first N arrivals of the trace")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rates", help="comma-separated mean arrival rates for every workload (default: per workload)")
    parser.add_argument("--torch-requests", type=int, default=2000, help="trace arrivals per torch window")
    parser.add_argument("--torch-windows", type=int, default=5)
    parser.add_argument("--torch-horizon", type=float, default=TORCH_HORIZON_S,
                        help="aging horizon on the CPU clock (its latencies are ~50x shorter than the H100 sim's)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--only-torch", action="store_true", help="rerun the torch part into the existing report")
    parser.add_argument("--ranker", type=Path, help="ranker artifact (default: the committed one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not TRACE.exists():
        sys.exit(f"trace not found: {TRACE} (the shared data folder is expected beside the repository)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    if args.only_torch:
        report = json.loads(args.out.read_text())
        report["torch_cpu"] = torch_part(args.torch_requests, args.torch_windows, args.torch_horizon, args.ranker)
        report["torch_command"] = command("bench.scheduling")
        report["torch_machine"] = machine_info()
    else:
        times = trace_times(args.requests)
        report = {"command": command("bench.scheduling"), "machine": machine_info(), "trace": str(TRACE.name),
                  "trace_requests": args.requests, "engine": "llama-3.1-8b on H100-SXM roofline, vLLM-like limits",
                  "default_horizon_s": DEFAULT_HORIZON_S,
                  "ranker": ranker_facts(args.ranker),
                  "simulated": [simulated(w, times, [float(r) for r in args.rates.split(",")] if args.rates else RATES[w],
                                          args.ranker) for w in args.workloads.split(",")]}
        if not args.skip_torch:
            report["torch_cpu"] = torch_part(args.torch_requests, args.torch_windows, args.torch_horizon, args.ranker)
            report["torch_command"], report["torch_machine"] = report["command"], report["machine"]
        elif args.out.exists():  # the torch part of an earlier run stays, with its own command and machine
            earlier = json.loads(args.out.read_text())
            report |= {k: earlier[k] for k in ("torch_cpu", "torch_command", "torch_machine") if k in earlier}
        report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    from bench.scheduling_plots import plot_all  # noqa: PLC0415

    for path in plot_all(report, args.out.parent, args.out.stem):
        print(f"wrote {path}")
    print(json.dumps([s["headline"] for s in report["simulated"]], indent=2))


if __name__ == "__main__":
    main()
