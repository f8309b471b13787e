"""Agent programs under KV pressure: job completion time (JCT) of SWE-bench agent programs, with
background chat traffic, for four pinning policies (bench/agent_sim.py), vs program arrival rate.

Simulated runner: Llama-3.1-8B on one H100 and Llama-3.1-70B on four (tensor parallel; its bf16
weights do not fit one), roofline step times, KV cache cut to `--kv-fraction` of what fits so that
memory is contended. Torch runner: the tiny model on this CPU, the same workload shrunk (contexts
/16, tool times x0.1), the engine on a CPU-time clock. Writes bench/results/agents.json and
bench/results/agents_jct_<model>.png.

    .venv/bin/python -m bench.agents            # full run (a few minutes on 2 cores)
    .venv/bin/python -m bench.agents --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from agent_sessions.config import SessionsConfig
from bench.agent_sim import POLICIES, attention_knee_tokens, make_chat, run_on_engine, run_policy
from bench.agent_workload import ToolScaling, load_templates, make_programs
from bench.common import CpuClock, command, machine_info, write_report
from engine.clock import VirtualClock
from engine.roofline import RooflineStepTime

RESULTS = Path(__file__).parent / "results"
MODELS = {"llama-3.1-8b": (1, [0.05, 0.1, 0.2, 0.4]), "llama-3.1-70b": (4, [0.025, 0.05, 0.1, 0.2])}


class CpuVirtualClock(CpuClock, VirtualClock):
    """bench/common.py's CpuClock starting at 0, typed as a virtual clock where simulate() wants one:
    a real runner's steps take what they cost, tool waits are skipped."""

    virtual = True

    def __init__(self) -> None:
        VirtualClock.__init__(self)
        self._offset = -time.thread_time()


def sim_sweep(args: argparse.Namespace, templates: list, scaling: ToolScaling) -> list[dict]:
    rows = []
    for model_name, (tp, rates) in MODELS.items():
        if args.models and model_name not in args.models:
            continue
        model = RooflineStepTime.builtin(model_name, tensor_parallel=tp)
        num_blocks = int(model.kv_capacity_blocks(16) * args.kv_fraction)
        for rate in args.rates or rates[: args.max_rates]:
            programs = make_programs(templates, args.programs, rate, scaling, seed=args.seed)
            chat = make_chat(args.chat_rate, programs[-1].arrival_s + 60, seed=args.seed + 1)
            for policy in POLICIES:
                config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model),
                                        memory_cost_weight=args.memory_cost_weight)
                result = run_policy(policy, programs, chat, model, num_blocks, config=config)
                rows.append({"runner": "simulated", "model": model_name, "tensor_parallel": tp,
                             "num_blocks": num_blocks, "program_rate_per_s": rate, **result})
                print(f"{model_name:14s} rate {rate:5.3f} {policy.name:18s} jct {result['jct_avg_s']:7.1f} "
                      f"p90 {result['jct_p90_s']:7.1f} ({result['wall_s']} s)", flush=True)
    return rows


def shrink(templates: list, token_div: int) -> list:
    return [dataclasses.replace(t, turns=[dataclasses.replace(u, new_prompt_tokens=max(1, u.new_prompt_tokens // token_div),
                                                              output_tokens=max(1, u.output_tokens // token_div))
                                          for u in t.turns]) for t in templates]


def torch_run(args: argparse.Namespace, templates: list, policies: list | None = None,
              host_ratios: tuple[int, ...] = (0,)) -> list[dict]:
    """The shrunk workload on the tiny model, each policy with a host KV tier of each of `host_ratios`
    times the GPU's blocks (bench/host_kv.py; 0: none)."""
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.tiny_model import make_tiny_model
    from engine.torch_runner import TorchModelRunner

    torch.set_num_threads(1)
    small = shrink(templates, 16)
    longest = max(sum(u.new_prompt_tokens + u.output_tokens for u in t.turns) for t in small)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-agents-")
    model_dir = make_tiny_model(Path(tmp.name) / "tiny", max_position_embeddings=longest + 64)
    rows = []
    for rate in args.torch_rates:
        programs = make_programs(small, args.torch_programs, rate, ToolScaling(args.torch_tool_scale, 20.0),
                                 seed=args.seed)
        chat = make_chat(args.chat_rate, programs[-1].arrival_s + 10, seed=args.seed + 1)
        chat = [dataclasses.replace(c, prompt_tokens=max(8, c.prompt_tokens // 16), output_tokens=max(2, c.output_tokens // 16))
                for c in chat]
        for policy in policies or POLICIES:
            for ratio in host_ratios:
                config = EngineConfig(num_blocks=args.torch_blocks, max_model_len=longest + 64, max_num_seqs=32,
                                      max_num_batched_tokens=1024, long_prefill_token_threshold=256,
                                      pin_budget_fraction=policy.pin_budget_fraction, pins_hold_admission=True,
                                      admit_whole_prompt=policy.admit_whole_prompt,
                                      num_host_blocks=ratio * args.torch_blocks)
                runner = TorchModelRunner(model_dir, config.num_blocks, config.block_size, device="cpu",
                                          dtype=torch.float32, num_host_blocks=config.num_host_blocks)
                engine = LLMEngine(config, runner, CpuVirtualClock(), policy.scheduling_policy())
                block_bytes = TorchModelRunner.kv_bytes_per_block(runner.config, config.block_size, torch.float32)
                result = run_on_engine(engine, policy, programs, chat, 1e9, block_bytes)
                rows.append({"runner": "torch-cpu", "model": "tiny (2 layers, hidden 64)", "num_blocks": config.num_blocks,
                             "host_ratio": ratio, "program_rate_per_s": rate, **result})
                print(f"torch tiny     rate {rate:5.3f} {policy.name:26s} host x{ratio:<3d} jct {result['jct_avg_s']:7.2f} "
                      f"p90 {result['jct_p90_s']:7.2f} ({result['wall_s']} s)", flush=True)
    return rows


def plot(rows: list[dict], out_dir: Path, stem: str = "agents") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model in sorted({r["model"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for policy in dict.fromkeys(r["policy"] for r in rows):
            points = sorted((r["program_rate_per_s"], r["jct_avg_s"], r["jct_p90_s"]) for r in rows
                            if r["model"] == model and r["policy"] == policy)
            for ax, i, label in ((axes[0], 1, "average"), (axes[1], 2, "p90")):
                ax.plot([p[0] for p in points], [p[i] for p in points], marker="o", label=policy)
                ax.set(xlabel="agent programs arriving per second", ylabel=f"{label} JCT (s)", title=f"{model}: {label}")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        name = f"{stem}_jct_" + model.split(" ")[0].replace(".", "_") + ".png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(name)
    return paths


def summary(rows: list[dict]) -> list[dict]:
    """Per model and load: Pitstop's JCT against each other policy's (ratios > 1: Pitstop is faster)."""
    out = []
    for key in dict.fromkeys((r["runner"], r["model"], r["program_rate_per_s"]) for r in rows):
        group = {r["policy"]: r for r in rows if (r["runner"], r["model"], r["program_rate_per_s"]) == key}
        mine = group["pitstop"]
        out.append({"runner": key[0], "model": key[1], "program_rate_per_s": key[2],
                    **{f"avg_jct_ratio_vs_{name}": r["jct_avg_s"] / mine["jct_avg_s"] for name, r in group.items()
                       if name != "pitstop"},
                    **{f"p90_jct_ratio_vs_{name}": r["jct_p90_s"] / mine["jct_p90_s"] for name, r in group.items()
                       if name != "pitstop"}})
    return out


def workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The workload's and sweep's options, shared with bench/host_kv.py."""
    parser.add_argument("--programs", type=int, default=40)
    parser.add_argument("--kv-fraction", type=float, default=0.25, help="share of the GPU's KV capacity given to the engine")
    parser.add_argument("--chat-rate", type=float, default=0.3, help="background chat requests per second")
    parser.add_argument("--tool-scale", type=float, default=2.0, help="all recorded tool times x this")
    parser.add_argument("--test-run-scale", type=float, default=20.0, help="Python/test runs x this on top")
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--max-rates", type=int, default=4)
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="program arrival rates (default: per model)")
    parser.add_argument("--torch-programs", type=int, default=24)
    parser.add_argument("--torch-rates", type=float, nargs="*", default=[2.0, 8.0])
    parser.add_argument("--torch-blocks", type=int, default=200)
    parser.add_argument("--torch-tool-scale", type=float, default=0.02, help="recorded tool times x this (torch)")
    parser.add_argument("--skip-torch", action="store_true", help="simulated runner only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer programs and loads (smoke test)")


def workload_record(args: argparse.Namespace, **fields: object) -> dict:
    """The report's record of `workload_arguments`' workload, with a caller's `fields` on top."""
    return {"trace": "shared/data/traces/swe_agent/swe_trajectories_5.json", "programs_per_run": args.programs,
            "chat_rate_per_s": args.chat_rate, "kv_fraction": args.kv_fraction,
            "tool_scaling": {"tool_scale": args.tool_scale, "test_run_scale": args.test_run_scale}, **fields}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_arguments(parser)
    parser.add_argument("--torch-only", action="store_true", help="rerun the torch part, keep --out's sim rows")
    parser.add_argument("--memory-cost-weight", type=float, default=SessionsConfig().memory_cost_weight,
                        help="the TTL policy's memory cost weight (agent_sessions/ttl_policy.py)")
    parser.add_argument("--out", type=Path, default=RESULTS / "agents.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.programs, args.max_rates, args.torch_programs, args.torch_rates = 10, 1, 3, [1.0]
        args.models = args.models or ["llama-3.1-8b"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    templates = load_templates()
    scaling = ToolScaling(args.tool_scale, args.test_run_scale)
    commands = {"all": command("bench.agents", argv)}
    if args.torch_only:
        import json

        previous = json.loads(args.out.read_text())
        commands = {"simulated": previous["commands"].get("simulated", previous["commands"].get("all")),
                    "torch-cpu": commands["all"]}
        rows = [r for r in previous["runs"] if r["runner"] != "torch-cpu"] + torch_run(args, templates)
    else:
        rows = sim_sweep(args, templates, scaling) + ([] if args.skip_torch else torch_run(args, templates))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plots = plot(rows, args.out.parent, args.out.stem)
    recorded = [u.tool_time_s for t in templates for u in t.turns if u.tool]
    report = {
        "commands": commands, "machine": machine_info(),
        "workload": {"trace": "shared/data/traces/swe_agent/swe_trajectories_5.json", "templates": len(templates),
                     "turns_per_program": [len(t.turns) for t in templates],
                     "final_context_tokens": [sum(u.new_prompt_tokens + u.output_tokens for u in t.turns) for t in templates],
                     "recorded_tool_time_median_s": sorted(recorded)[len(recorded) // 2],
                     "recorded_tool_time_max_s": max(recorded), "tool_scaling": dataclasses.asdict(scaling),
                     "programs_per_run": args.programs, "memory_cost_weight": args.memory_cost_weight, "chat_rate_per_s": args.chat_rate, "kv_fraction": args.kv_fraction},
        "policies": [dataclasses.asdict(p) for p in POLICIES], "summary": summary(rows), "runs": rows, "plots": plots,
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report




if __name__ == "__main__":
    main()
