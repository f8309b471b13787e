"""The ranker's work score on agent traffic: does a returning turn's pinned context count as work?

The gateway ranks every request by expected work, prompt plus answer (rankers/work.py). An agent's
returning turn carries its whole conversation, tens of thousands of tokens, but where its session's
pin holds that context on the instance the turn goes to, the engine prefills only the new part.
Counting the whole prompt scores such a turn as one of the longest requests and ages it behind newer
work while it holds pinned KV; leaving out the pinned part (gateway/sessions.py's pinned_context)
scores it by what the engine will really do.

Same workload and engine as bench/agents.py (SWE-bench programs plus background chat on the
simulated Llama-3.1-8B / H100 and 70B / 4xH100, KV cut to a quarter), the `pitstop` pinning policy,
three waiting-queue orders: `pitstop` (program-first over FCFS, bench/agents.py's), and program-first
over the work score of true lengths (bench/agent_sim.py's RANKED_POLICIES), the whole prompt counted
or its pinned part left out. Several seeds, since one run has only 40 programs. Writes
bench/results/agents_ranked.json.

    .venv/bin/python -m bench.agents_ranked            # ~5 min on 2 cores"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from agent_sessions.config import SessionsConfig
from bench.agent_sim import (
    POLICIES,
    RANKED_POLICIES,
    attention_knee_tokens,
    make_chat,
    run_policy,
    workload_work_table,
)
from bench.agent_workload import ToolScaling, load_templates, make_programs
from bench.agents import MODELS
from bench.common import command, machine_info, write_report
from engine.roofline import RooflineStepTime
from rankers.work import PREFILL_WEIGHT

RESULTS = Path(__file__).parent / "results"
BASELINE = next(p for p in POLICIES if p.name == "pitstop")
METRICS = ("jct_avg_s", "jct_p90_s", "chat_latency_avg_s", "chat_latency_p90_s", "pin_hit_tokens")


def sweep(args: argparse.Namespace) -> list[dict]:
    templates = load_templates()
    scaling = ToolScaling(args.tool_scale, args.test_run_scale)
    rows = []
    for model_name, (tp, rates) in MODELS.items():
        model = RooflineStepTime.builtin(model_name, tensor_parallel=tp)
        num_blocks = int(model.kv_capacity_blocks(16) * args.kv_fraction)
        config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
        for rate in rates:
            for seed in args.seeds:
                programs = make_programs(templates, args.programs, rate, scaling, seed=seed)
                chat = make_chat(args.chat_rate, programs[-1].arrival_s + 60, seed=seed + 1)
                table = workload_work_table(programs, chat, args.prefill_weight)
                for policy in [BASELINE, *RANKED_POLICIES]:
                    work = None if policy.rank == "none" else table
                    result = run_policy(policy, programs, chat, model, num_blocks, config=config, work=work)
                    rows.append({"model": model_name, "program_rate_per_s": rate, "seed": seed, **result})
                    print(f"{model_name:14s} rate {rate:5.3f} seed {seed} {policy.name:30s} "
                          f"jct {result['jct_avg_s']:7.1f} p90 {result['jct_p90_s']:7.1f} "
                          f"chat {result['chat_latency_avg_s']:6.2f}", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per model and rate: each policy's metrics averaged over seeds, and the ratios that matter."""
    out = []
    for model, rate in dict.fromkeys((r["model"], r["program_rate_per_s"]) for r in rows):
        cell = [r for r in rows if r["model"] == model and r["program_rate_per_s"] == rate]
        means = {p: {m: statistics.fmean(r[m] for r in cell if r["policy"] == p) for m in METRICS}
                 for p in dict.fromkeys(r["policy"] for r in cell)}
        whole, discount = means[RANKED_POLICIES[0].name], means[RANKED_POLICIES[1].name]
        base = means[BASELINE.name]
        out.append({"model": model, "program_rate_per_s": rate, "seeds": len({r["seed"] for r in cell}),
                    "means": means,
                    "jct_avg_whole_over_discount": whole["jct_avg_s"] / discount["jct_avg_s"],
                    "jct_p90_whole_over_discount": whole["jct_p90_s"] / discount["jct_p90_s"],
                    "chat_avg_whole_over_discount": whole["chat_latency_avg_s"] / discount["chat_latency_avg_s"],
                    "jct_avg_fcfs_over_discount": base["jct_avg_s"] / discount["jct_avg_s"],
                    "chat_avg_fcfs_over_discount": base["chat_latency_avg_s"] / discount["chat_latency_avg_s"],
                    "discount_better_jct_seeds": sum(
                        a["jct_avg_s"] > b["jct_avg_s"]
                        for a, b in zip((r for r in cell if r["policy"] == RANKED_POLICIES[0].name),
                                        (r for r in cell if r["policy"] == RANKED_POLICIES[1].name), strict=True))})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--kv-fraction", type=float, default=0.25)
    parser.add_argument("--chat-rate", type=float, default=0.3)
    parser.add_argument("--tool-scale", type=float, default=2.0)
    parser.add_argument("--test-run-scale", type=float, default=20.0)
    parser.add_argument("--prefill-weight", type=float, default=PREFILL_WEIGHT,
                        help="the work score's prefill weight (the gateway's default, chosen for an H100)")
    parser.add_argument("--out", type=Path, default=RESULTS / "agents_ranked.json")
    args = parser.parse_args(argv)
    rows = sweep(args)
    report = {"command": command("bench.agents_ranked", argv), "machine": machine_info(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "policies": [p.name for p in [BASELINE, *RANKED_POLICIES]], "summary": summary(rows), "runs": rows}
    write_report(args.out, report)
    for s in report["summary"]:
        print(f"{s['model']:14s} rate {s['program_rate_per_s']:5.3f}: JCT whole/discount "
              f"{s['jct_avg_whole_over_discount']:.3f} (p90 {s['jct_p90_whole_over_discount']:.3f}, "
              f"better in {s['discount_better_jct_seeds']}/{s['seeds']} seeds), chat {s['chat_avg_whole_over_discount']:.3f}; "
              f"program-fcfs/discount JCT {s['jct_avg_fcfs_over_discount']:.3f}, chat {s['chat_avg_fcfs_over_discount']:.3f}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
