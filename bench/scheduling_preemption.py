"""Ordering running requests too: preempt a running request for a waiting one that comes first in the
policy's order. Tried against waiting-queue order alone and not adopted; the record.

The engine orders only its waiting queue (engine/scheduler.py): a running request keeps its slot
until it finishes, unless KV memory runs out. The issue leaves ordering running requests to whether
it pays. The variant here is vLLM V0's priority preemption: before each step, while every sequence
slot is taken and the head of the waiting queue has a smaller policy key than the running request
with the largest key, that request is preempted (by recompute, as the engine already preempts under
memory pressure; at most `MAX_PREEMPTIONS_PER_STEP` a step so one step cannot flush the batch).
For the oracle (true remaining length) this is shortest-remaining-first with preemption, the bound
any running-request order could reach. Measured at the settings of bench/scheduling_key_shapes.py
(bench/scheduling.py's headline loads and the whole trace near capacity), where sequence slots, not
KV blocks, are what requests wait for (all 256 slots taken in every step with a queue).

    .venv/bin/python -m bench.scheduling_preemption    # ~3 min on one core; bench/results/scheduling_preemption.json"""

from __future__ import annotations

from bench.common import RESULTS
from bench.scheduling import NO_AGING, run_sim
from bench.scheduling_key_shapes import run_settings
from bench.scheduling_workload import OracleRemainingPolicy, held_out_requests, trace_times
from engine.batch import ScheduledBatch
from engine.llm_engine import LLMEngine
from engine.policy import FCFSPolicy, SchedulingPolicy
from engine.rank_policy import DEFAULT_HORIZON_S, RankPolicy
from engine.scheduler import Scheduler

OUT = RESULTS / "scheduling_preemption.json"
MAX_PREEMPTIONS_PER_STEP = 8


class OrderPreemptingScheduler(Scheduler):
    """The engine's scheduler, plus: a full batch gives up its last-ordered running request to a
    waiting one ordered before it."""

    def schedule(self, now: float) -> ScheduledBatch:
        key = self.policy.sort_key
        for _ in range(MAX_PREEMPTIONS_PER_STEP):
            head = self.waiting.peek()
            if head is None or len(self.running) < self.config.max_num_seqs:
                break
            victim = max(self.running, key=key)
            if not key(head) < key(victim):
                break
            self._preempt(victim)
        return super().schedule(now)


def preempt_for_order(engine: LLMEngine) -> None:
    old = engine.scheduler
    assert len(old) == 0, "swap the scheduler before any request arrives"
    engine.scheduler = OrderPreemptingScheduler(old.config, old.block_manager, old.policy)


def setting(workload: str, arrivals: int, rate: float) -> dict:
    times, pools = trace_times(arrivals), held_out_requests(workload)
    fcfs = run_sim(FCFSPolicy(), times, pools, rate)
    policies: dict[str, SchedulingPolicy] = {"rank": RankPolicy(DEFAULT_HORIZON_S),
                                             "rank-no-aging": RankPolicy(NO_AGING), "oracle": OracleRemainingPolicy()}
    runs = []
    for name, policy in policies.items():
        for preempt in (False, True):
            row = run_sim(policy, times, pools, rate, preempt_for_order if preempt else None)
            runs.append({"policy": name, "preempt_running": preempt, "mean_s": row["mean_s"], "p99_s": row["p99_s"],
                         "preemptions": row["preemptions"], "fcfs_over_mean": fcfs["mean_s"] / row["mean_s"],
                         "p99_over_fcfs": row["p99_s"] / fcfs["p99_s"]})
            print(f"{workload} {arrivals} @ {rate}: {name} preempt={preempt}: mean {row['mean_s']:.2f}s "
                  f"({runs[-1]['fcfs_over_mean']:.3f}x FCFS), p99 {runs[-1]['p99_over_fcfs']:.3f}x FCFS, "
                  f"{row['preemptions']} preemptions", flush=True)
    return {"workload": workload, "trace_arrivals": arrivals, "rate": rate,
            "fcfs": {"mean_s": fcfs["mean_s"], "p99_s": fcfs["p99_s"]}, "runs": runs}


def main() -> None:
    run_settings("bench.scheduling_preemption", __doc__, OUT, setting, max_preemptions_per_step=MAX_PREEMPTIONS_PER_STEP)


if __name__ == "__main__":
    main()
