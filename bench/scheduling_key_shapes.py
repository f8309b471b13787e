"""A rank key shaped by answer length, tried against the default linear one and rejected; the record.

The default key (engine/rank_policy.py) is `arrival + horizon x score`, the score being a quantile
of the model's training answer lengths, so a request is pushed back in proportion to its quantile.
The variant pushes it back in proportion to the answer length at that quantile, relative to the
longest (`arrival + horizon x L(score) / L(1)`, L the quantile function of the model's training
answers): short answers stay near FCFS among themselves, long ones give way. Both keep the same
starvation bound (at most `horizon` seconds of delay), so the comparison is mean latency against p99
over a horizon sweep, FCFS as the reference, at the headline loads of bench/scheduling.py: the first
6,000 arrivals at the highest rate FCFS keeps up with, and the whole trace just under capacity.

    .venv/bin/python -m bench.scheduling_key_shapes    # ~8 min on one core; bench/results/scheduling_key_shapes.json"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, machine_info, write_report
from bench.scheduling import run_sim
from bench.scheduling_workload import TRACE, WORKLOADS, held_out_requests, ranker_facts, trace_times
from engine.policy import FCFSPolicy, SchedulingPolicy
from engine.rank_policy import RankPolicy
from engine.sequence import Sequence

OUT = RESULTS / "scheduling_key_shapes.json"
# (workload, trace arrivals, rate): bench/scheduling.py's headlines, then the whole trace near capacity.
SETTINGS = [("alpaca-llama3-8b", 6000, 100.0), ("mixed-mixtral", 6000, 240.0),
            ("alpaca-llama3-8b", 19366, 50.0), ("mixed-mixtral", 19366, 110.0)]
LINEAR_HORIZONS = (10.0, 30.0, 60.0, 120.0)
SHAPED_HORIZONS = (30.0, 60.0, 120.0, 300.0)


class LengthShapedRankPolicy(RankPolicy):
    """`arrival + horizon x L(score) / L(1)`; L from the model's training answer lengths."""

    name = "rank-length-shaped"

    def __init__(self, horizon_s: float, training_lengths: np.ndarray) -> None:
        super().__init__(horizon_s)
        self._levels = np.linspace(0.0, 1.0, 101)
        quantiles = np.quantile(training_lengths.astype(float), self._levels)
        self._relative = quantiles / quantiles[-1]

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        shaped = float(np.interp(self.effective_score(seq), self._levels, self._relative))
        return (seq.priority, seq.arrival_time + self.horizon_s * shaped)


def training_lengths(workload: str) -> np.ndarray:
    """The workload model's answer lengths on the ranker's training prompts (never the held-out ones)."""
    from rankers.data import load_lengths  # noqa: PLC0415
    from rankers.split import split_by_prompt  # noqa: PLC0415

    sources, model = WORKLOADS[workload]
    return np.concatenate([split_by_prompt(load_lengths(s))[0].with_models({model}).output_tokens for s in sources])


def setting(workload: str, arrivals: int, rate: float) -> dict:
    times, pools, lengths = trace_times(arrivals), held_out_requests(workload), training_lengths(workload)
    fcfs = run_sim(FCFSPolicy(), times, pools, rate)
    variants: list[tuple[str, float, SchedulingPolicy]] = [
        *(("linear", h, RankPolicy(h)) for h in LINEAR_HORIZONS),
        *(("length-shaped", h, LengthShapedRankPolicy(h, lengths)) for h in SHAPED_HORIZONS)]
    runs = []
    for key, horizon, policy in variants:
        row = run_sim(policy, times, pools, rate)
        runs.append({"key": key, "horizon_s": horizon, "mean_s": row["mean_s"], "p99_s": row["p99_s"],
                     "fcfs_over_mean": fcfs["mean_s"] / row["mean_s"], "p99_over_fcfs": row["p99_s"] / fcfs["p99_s"]})
        print(f"{workload} {arrivals} @ {rate}: {key} h={horizon:g}: mean {row['mean_s']:.2f}s "
              f"({runs[-1]['fcfs_over_mean']:.3f}x FCFS), p99 {runs[-1]['p99_over_fcfs']:.3f}x FCFS", flush=True)
    return {"workload": workload, "trace_arrivals": arrivals, "rate": rate,
            "fcfs": {"mean_s": fcfs["mean_s"], "p99_s": fcfs["p99_s"]}, "runs": runs}


def run_settings(module: str, doc: str, out: Path, setting_fn: Callable[[str, int, float], dict],
                 **extra: object) -> None:
    """The command line of a benchmark that measures `setting_fn` at every one of SETTINGS."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    if not TRACE.exists():
        sys.exit(f"trace not found: {TRACE} (the shared data folder is expected beside the repository)")
    report = {"command": command(module), "machine": machine_info(),
              "engine": "llama-3.1-8b on H100-SXM roofline, vLLM-like limits (simulated)", "ranker": ranker_facts(), **extra,
              "settings": [setting_fn(*s) for s in SETTINGS]}
    print(f"wrote {write_report(args.out, report)}")


def main() -> None:
    run_settings("bench.scheduling_key_shapes", __doc__, OUT, setting)


if __name__ == "__main__":
    main()
