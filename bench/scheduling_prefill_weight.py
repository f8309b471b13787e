"""How much a prompt token counts against an answer token in the work score (rankers/work.py's
PREFILL_WEIGHT), chosen where the scheduling benchmark cannot see it.

The weight is an engine-cost constant, not a ranker parameter, so it is chosen with the true lengths
(the `oracle-work` policy: least remaining prompt x weight + answer first) rather than with a ranker,
on prompts of the ranker's *training* split (bench/scheduling.py replays held-out ones) and on the Azure
trace's *second* 6,000 arrivals (bench/scheduling.py replays the first). FCFS mean over oracle-work mean
per weight, at the two workloads' busiest loads; weight 0 is the answer-only oracle. The same for the
torch runner's engine (bench/scheduling_torch.py), on its noise-free twin: the step times fitted on the
tiny CPU engine in bench/results/scheduling.json, the mixed workload shrunk as that replay shrinks it,
the trace's arrivals 10,000-11,999 (the torch part replays the first 10,000), loads as fractions of
the twin's capacity.

    .venv/bin/python -m bench.scheduling_prefill_weight   # ~4 min on one core; bench/results/scheduling_prefill_weight.json"""

from __future__ import annotations

import json

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from bench.scheduling import run_sim
from bench.scheduling_workload import WORKLOADS, LengthRequest, OracleWorkPolicy, trace_times
from engine.policy import FCFSPolicy

OUT = RESULTS / "scheduling_prefill_weight.json"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
TORCH_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
TORCH_LOADS = (1.0, 1.2)
SETTINGS = {"mixed-mixtral": (150.0, 240.0), "alpaca-llama3-8b": (80.0, 100.0)}
PER_SOURCE = 600


def training_requests(workload: str, seed: int = 1) -> list[list[LengthRequest]]:
    """Per source, up to PER_SOURCE training prompts with the workload model's real answer lengths."""
    from rankers.data import load_lengths  # noqa: PLC0415
    from rankers.split import split_by_prompt  # noqa: PLC0415
    from routers.tokens import count_tokens  # noqa: PLC0415

    sources, model = WORKLOADS[workload]
    rng = np.random.default_rng(seed)
    pools = []
    for source in sources:
        train = split_by_prompt(load_lengths(source))[0].with_models({model})
        picks = rng.permutation(len(train))[:PER_SOURCE]
        tokens = count_tokens([train.prompts[i] for i in picks])
        pools.append([LengthRequest(max(t, 2), max(int(train.output_tokens[i]), 1), 0.5)
                      for t, i in zip(tokens, picks, strict=True)])
    return pools


def torch_twin_rows() -> list[dict]:
    """FCFS over oracle-work per weight on the torch engine's twin (bench/scheduling_torch.py)."""
    from bench.scheduling import RESULTS as SCHEDULING_DIR  # noqa: PLC0415
    from bench.scheduling_torch import tiny_engine_config, torch_workload, twin_replay  # noqa: PLC0415
    from engine.step_time import LinearStepTime  # noqa: PLC0415

    fitted = json.loads((SCHEDULING_DIR / "scheduling.json").read_text())["torch_cpu"]["twin_step_time"]
    step_time = LinearStepTime(**{k: v for k, v in fitted.items() if k != "model"})
    config, requests = tiny_engine_config(), 2_000
    times = trace_times(12_000)[10_000:]
    workload = torch_workload(times, training_requests("mixed-mixtral"), requests, seed=5)
    span = workload[-1].arrival_s
    capacity = requests / max(twin_replay(config, step_time, FCFSPolicy(), workload, 1e9)["latency"])
    rows = []
    for load in TORCH_LOADS:
        scale = load * capacity / (requests / span)
        fcfs = float(np.mean(twin_replay(config, step_time, FCFSPolicy(), workload, scale)["latency"]))
        gains = {str(w): fcfs / float(np.mean(twin_replay(config, step_time, OracleWorkPolicy(w), workload, scale)["latency"]))
                 for w in TORCH_WEIGHTS}
        rows.append({"workload": "mixed-mixtral, torch runner's twin", "load": load, "fcfs_mean_s": fcfs,
                     "fcfs_over_oracle_work_mean": gains})
        print("torch twin", load, {w: round(g, 3) for w, g in gains.items()}, flush=True)
    return rows


def main() -> None:
    times = trace_times(12_000)[6_000:]
    rows = []
    for workload, rates in SETTINGS.items():
        pools = training_requests(workload)
        for rate in rates:
            fcfs = run_sim(FCFSPolicy(), times, pools, rate)["mean_s"]
            gains = {str(w): fcfs / run_sim(OracleWorkPolicy(w), times, pools, rate)["mean_s"] for w in WEIGHTS}
            rows.append({"workload": workload, "rate": rate, "fcfs_mean_s": fcfs, "fcfs_over_oracle_work_mean": gains})
            print(workload, rate, {w: round(g, 3) for w, g in gains.items()}, flush=True)
    torch_rows = torch_twin_rows()
    best = {f"{r['workload']}@{r.get('rate', r.get('load')):g}": max(r["fcfs_over_oracle_work_mean"],
                                                                   key=r["fcfs_over_oracle_work_mean"].get)
            for r in rows + torch_rows}
    write_report(OUT, {"command": command("bench.scheduling_prefill_weight"), "machine": machine_info(),
                       "trace_window": "arrivals 6,000-11,999", "prompts": f"training split, {PER_SOURCE} per source",
                       "weights": list(WEIGHTS), "rows": rows, "torch_twin_weights": list(TORCH_WEIGHTS),
                       "torch_twin_rows": torch_rows, "best_weight": best})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
