"""The host KV tier against re-prefill: agent programs under KV pressure (bench/agents.py's workload:
SWE-agent trajectories with their recorded tool times, background chat), each pinning policy with no
host tier and with host memory of 1x, 4x and 16x the GPU's KV blocks (engine/host_cache.py).

Simulated runner: Llama-3.1-8B on one H100 and Llama-3.1-70B on four, roofline step times, host
copies priced over PCIe Gen5 at 80% of 64 GB/s and added to the step (the engine performs them
before the forward pass). Torch runner: the tiny model on this CPU with bench/agents.py's shrunk
workload, where a copy is a real memory copy and a re-prefill a real forward pass. Writes
bench/results/host_kv.json.

    .venv/bin/python -m bench.host_kv            # full run (a few minutes on 2 cores)
    .venv/bin/python -m bench.host_kv --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent_sessions.config import SessionsConfig
from bench.agent_sim import POLICIES, attention_knee_tokens, make_chat, run_policy
from bench.agent_workload import ToolScaling, load_templates, make_programs
from bench.agents import MODELS, torch_run, workload_arguments, workload_record
from bench.common import command, machine_info, write_report
from engine.roofline import RooflineStepTime

RESULTS = Path(__file__).parent / "results"
POLICY_NAMES = ("no-pinning", "no-pinning-chunk-admission", "fixed-2s", "pitstop")
HOST_RATIOS = (0, 1, 4, 16)  # host blocks per GPU KV block


def _policies() -> list:
    return [p for p in POLICIES if p.name in POLICY_NAMES]


def sim_sweep(args: argparse.Namespace, templates: list, scaling: ToolScaling) -> list[dict]:
    rows = []
    for model_name, (tp, rates) in MODELS.items():
        if args.models and model_name not in args.models:
            continue
        model = RooflineStepTime.builtin(model_name, tensor_parallel=tp)
        num_blocks = int(model.kv_capacity_blocks(16) * args.kv_fraction)
        copy_s_per_token = model._s_per_kv_token_moved
        for rate in args.rates or rates[: args.max_rates]:
            programs = make_programs(templates, args.programs, rate, scaling, seed=args.seed)
            chat = make_chat(args.chat_rate, programs[-1].arrival_s + 60, seed=args.seed + 1)
            for policy in _policies():
                for ratio in args.host_ratios:
                    config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
                    result = run_policy(policy, programs, chat, model, num_blocks, config=config,
                                        num_host_blocks=ratio * num_blocks)
                    moved = result.get("host_saved_blocks", 0) + result.get("host_loaded_blocks", 0)
                    rows.append({"runner": "simulated", "model": model_name, "tensor_parallel": tp,
                                 "num_blocks": num_blocks, "host_ratio": ratio, "program_rate_per_s": rate,
                                 "host_copy_s": moved * 16 * copy_s_per_token, **result})
                    _log(model_name, rate, policy.name, ratio, result)
                    if policy.name == "pitstop" and ratio and args.ablation:
                        rows.append(_gpu_only_rules(args, model_name, tp, num_blocks, rate, ratio, programs, chat,
                                                    model, config))
    return rows


def _gpu_only_rules(args: argparse.Namespace, model_name: str, tp: int, num_blocks: int, rate: float, ratio: int,
                    programs: list, chat: list, model: RooflineStepTime, config: SessionsConfig) -> dict:
    """The ablation: Pitstop on the host tier with its GPU-only rules, TTLs priced as re-prefill and a
    returning turn's pin held 30 s while it waits."""
    policy = next(p for p in POLICIES if p.name == "pitstop")
    result = run_policy(policy, programs, chat, model, num_blocks, config=config, num_host_blocks=ratio * num_blocks,
                        price_kv_tiers=False, pin_hold_on_arrival_s=30.0)
    result["policy"] = "pitstop-gpu-only-rules"
    _log(model_name, rate, result["policy"], ratio, result)
    return {"runner": "simulated", "model": model_name, "tensor_parallel": tp, "num_blocks": num_blocks,
            "host_ratio": ratio, "program_rate_per_s": rate, **result}


def _log(model: str, rate: float, policy: str, ratio: int, result: dict) -> None:
    print(f"{model:14s} rate {rate:5.3f} {policy:26s} host x{ratio:<3d} jct {result['jct_avg_s']:7.1f} "
          f"p90 {result['jct_p90_s']:7.1f} prefill {result['prefill_tokens_computed']:>9d} "
          f"host hits {result.get('host_hit_tokens', 0):>9d} ({result['wall_s']} s)", flush=True)


def summary(rows: list[dict]) -> list[dict]:
    """Per runner, model, load and policy: mean JCT with each host size against none (> 1: faster with
    it), and against Pitstop's without one."""
    out = []
    for key in dict.fromkeys((r["runner"], r["model"], r["program_rate_per_s"]) for r in rows):
        group = [r for r in rows if (r["runner"], r["model"], r["program_rate_per_s"]) == key]
        pitstop_gpu_only = next(r for r in group if r["policy"] == "pitstop" and r["host_ratio"] == 0)
        for policy in dict.fromkeys(r["policy"] for r in group):
            runs = {r["host_ratio"]: r for r in group if r["policy"] == policy}
            base = runs.get(0, pitstop_gpu_only)  # the ablation runs only with a host tier
            out.append({"runner": key[0], "model": key[1], "program_rate_per_s": key[2], "policy": policy,
                        "jct_avg_s": {str(k): round(r["jct_avg_s"], 1) for k, r in runs.items()},
                        "speedup_vs_no_host": {str(k): round(base["jct_avg_s"] / r["jct_avg_s"], 3)
                                               for k, r in runs.items() if k},
                        "speedup_vs_pitstop_gpu_only": {str(k): round(pitstop_gpu_only["jct_avg_s"] / r["jct_avg_s"], 3)
                                                        for k, r in runs.items()},
                        "prefill_tokens_computed": {str(k): r["prefill_tokens_computed"] for k, r in runs.items()}})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_arguments(parser)  # bench/agents.py's
    parser.add_argument("--host-ratios", type=int, nargs="*", default=list(HOST_RATIOS))
    parser.add_argument("--no-ablation", dest="ablation", action="store_false",
                        help="skip Pitstop with its GPU-only rules on the host tier")
    parser.add_argument("--torch-host-ratios", type=int, nargs="*", default=[0, 4])
    parser.add_argument("--out", type=Path, default=RESULTS / "host_kv.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.programs, args.max_rates, args.torch_programs, args.torch_rates = 10, 1, 3, [1.0]
        args.models = args.models or ["llama-3.1-8b"]
        args.host_ratios = [0, 4]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    templates = load_templates()
    rows = sim_sweep(args, templates, ToolScaling(args.tool_scale, args.test_run_scale))
    rows += [] if args.skip_torch else torch_run(args, templates, _policies(), tuple(args.torch_host_ratios))
    report = {
        "command": command("bench.host_kv", argv), "machine": machine_info(),
        "workload": workload_record(args),
        "host_link": "PCIe Gen5 x16, 64 GB/s one way per GPU, 80% achieved (engine/roofline.py)",
        "summary": summary(rows), "runs": rows,
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
