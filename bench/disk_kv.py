"""The disk KV tier (engine/disk_cache.py) behind the GPU and the host tier, and across a restart.

(a) Simulated runner, roofline step times (machine-independent): bench/host_kv.py's agent programs
(SWE-agent trajectories with their recorded tool times, background chat) on Llama-3.1-8B on one H100,
its KV cut to a quarter of what fits: the GPU's KV only, a host tier of 1x the GPU's blocks, that host tier
with a disk tier of 16x behind it (on one NVMe drive, and on four), and the disk tier alone. Disk reads
priced at 80% of each drive's 6 GB/s (engine/roofline.py), queued on the drive as the engine reads ahead,
then the PCIe copy; writes run behind the step. Then a restart: the engine
drained and restarted when half the programs have arrived (turns arriving meanwhile wait for the new
engine); its GPU and host KV are lost, the disk's index is taken over, or, for comparison, lost too.
Policies: no pinning; Pitstop's, its TTLs priced with the tiers (a context the host tier cannot hold
comes back from disk: the copies and the drive's read) and no pin held while a returning turn waits;
and, the ablation, Pitstop's with its GPU-only rules (TTLs priced as re-prefill, pins held 30 s).
(b) Torch runner on this CPU, one run: time to first token of a long prompt computed, its prefix on the
GPU, loaded from the host tier, from the disk tier (the file in the page cache, then dropped from it),
and from disk after a restart; and what a disk write costs the step that queues it.

    .venv/bin/python -m bench.disk_kv            # full run (a few minutes on 2 cores)
    .venv/bin/python -m bench.disk_kv --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from agent_sessions.config import SessionsConfig
from bench.agent_sim import (
    POLICIES,
    AgentDriver,
    ChatRequest,
    PinPolicy,
    TierRates,
    attention_knee_tokens,
    make_chat,
    policy_engine,
    prefill_tokens_per_s,
    run_policy,
    workload_arrivals,
)
from bench.agent_workload import Program, ToolScaling, load_templates, make_programs
from bench.agents import workload_arguments, workload_record
from bench.common import command, machine_info, write_report
from engine.roofline import RooflineStepTime
from engine.simulate import Arrival, RequestResult, simulate

RESULTS = Path(__file__).parent / "results"
# (host blocks, disk blocks) per GPU KV block, and NVMe drives behind the disk tier (their reads add up).
TIERS = {"gpu-only": (0, 0, 1), "host-1x": (1, 0, 1), "host-1x+disk-16x": (1, 16, 1), "disk-16x": (0, 16, 1),
         "host-1x+disk-16x, 4 drives": (1, 16, 4)}
NO_READ_AHEAD = "host-1x+disk-16x, loaded in the step"  # the ablation: no read-ahead (EngineConfig.disk_read_ahead)
# The ablation of Pitstop's tier rules: TTLs priced as re-prefill (as if the engine had neither tier) and a
# returning turn's pin held 30 s while it waits, as on an engine with the GPU's KV only.
GPU_ONLY_RULES = "pitstop-gpu-only-rules"
POLICY_NAMES = ("no-pinning", "pitstop", GPU_ONLY_RULES)


def _policies(names: tuple[str, ...] = POLICY_NAMES) -> list[tuple[str, PinPolicy, dict]]:
    """(name, policy, run_policy's extra arguments) for each name."""
    by_name = {p.name: p for p in POLICIES}
    return [(name, by_name["pitstop"], {"price_kv_tiers": False, "pin_hold_on_arrival_s": 30.0})
            if name == GPU_ONLY_RULES else (name, by_name[name], {}) for name in names]


def _sessions(model: RooflineStepTime) -> SessionsConfig:
    return SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))


def on_drives(model: RooflineStepTime, drives: int) -> RooflineStepTime:
    """The same GPU with `drives` NVMe drives striped behind its disk tier."""
    gpu = model.gpu
    return replace(model, gpu=replace(gpu, disk_read_bytes_per_s=gpu.disk_read_bytes_per_s * drives,
                                      disk_write_bytes_per_s=gpu.disk_write_bytes_per_s * drives))


def _disk_figures(result: dict, model: RooflineStepTime, block_size: int = 16) -> dict:
    """Seconds the steps spent reading the drive, and the write rate the tier asked of it on average."""
    block_bytes = model.model.kv_bytes_per_token * block_size
    written = result.get("disk_saved_blocks", 0) * block_bytes
    return {"disk_read_s": result.get("disk_loaded_blocks", 0) * block_size * model._s_per_disk_token_read,
            "disk_write_gb_per_s_avg": written / max(1e-9, result["simulated_s"]) / 1e9}


def sim_tiers(model: RooflineStepTime, num_blocks: int, rates: list[float], templates: list, scaling: ToolScaling,
              num_programs: int, chat_rate: float, seed: int, tiers: dict[str, tuple[int, int, int]] = TIERS,
              policies: tuple[str, ...] = POLICY_NAMES) -> list[dict]:
    rows = []
    for rate in rates:
        programs = make_programs(templates, num_programs, rate, scaling, seed=seed)
        chat = make_chat(chat_rate, programs[-1].arrival_s + 60, seed=seed + 1)
        for name, policy, rules in _policies(policies):
            for tier, (host, disk, drives) in tiers.items():
                priced = on_drives(model, drives)
                result = run_policy(policy, programs, chat, priced, num_blocks, config=_sessions(model),
                                    num_host_blocks=host * num_blocks, num_disk_blocks=disk * num_blocks,
                                    disk_read_ahead=tier != NO_READ_AHEAD, **rules) | {"policy": name}
                rows.append({"scenario": "tiers", "tiers": tier, "program_rate_per_s": rate, "num_blocks": num_blocks,
                             "drives": drives, **result, **_disk_figures(result, priced)})
                _log(rate, name, tier, result)
    return rows


def _log(rate: float, policy: str, tier: str, result: dict) -> None:
    print(f"rate {rate:5.3f} {policy:12s} {tier:28s} jct {result['jct_avg_s']:7.1f} p90 {result['jct_p90_s']:7.1f} "
          f"prefill {result['prefill_tokens_computed']:>9d} host {result.get('host_hit_tokens', 0):>9d} "
          f"disk {result.get('disk_hit_tokens', 0):>9d} ({result.get('wall_s', 0)} s)", flush=True)


def restart_run(policy: PinPolicy, programs: list[Program], chat: list[ChatRequest], model: RooflineStepTime,
                num_blocks: int, host: int, disk: int, keep_index: bool, restart_s: float, folder: Path,
                drives: int = 1) -> dict:
    """The workload on one engine until `restart_s`; then it drains (turns arriving meanwhile are held), closes
    (a clean close writes what it caches to disk) and a new engine on the same disk folder serves the rest.
    `keep_index` False: the folder is emptied first, as if the disk tier kept nothing across restarts."""
    model = on_drives(model, drives)

    def engine_at(now: float):  # noqa: ANN202 - an LLMEngine
        engine = policy_engine(policy, model, num_blocks, num_host_blocks=host * num_blocks,
                               num_disk_blocks=disk * num_blocks, disk_kv_path=folder if disk else None)
        engine.clock.advance_to(now)
        return engine

    started = time.perf_counter()
    first = engine_at(0.0)
    driver = AgentDriver(first, policy, programs, prefill_tokens_per_s(model, first.config.long_prefill_token_threshold),
                         _sessions(model), tiers=TierRates.of(model))
    arrivals = workload_arrivals(driver, programs, chat)
    held: list[Arrival] = []

    def hold(result: RequestResult, tokens: list[int]) -> list[Arrival]:
        follow_ups = driver.on_finish(result, tokens)
        held.extend(a for a in follow_ups if a.arrival_time >= restart_s)
        return [a for a in follow_ups if a.arrival_time < restart_s]

    results = simulate(first, [a for a in arrivals if a.arrival_time < restart_s], hold)
    drained = first.clock.now()
    first_stats = first.stats()
    first.close()  # with a disk tier: the flush to disk, priced on its clock, and the index
    closed = first.clock.now()
    if disk and not keep_index:
        shutil.rmtree(folder)
    second = engine_at(max(closed, restart_s))
    restored = second.stats().blocks.disk
    driver.engine, driver._step_mark = second, (second.clock.now(), 0)
    later = sorted(held + [a for a in arrivals if a.arrival_time >= restart_s], key=lambda a: a.arrival_time)
    results += simulate(second, later, driver.on_finish)
    second.close()
    stats = second.stats()
    jct = {p.program_id: driver.run.finish[p.program_id] - p.arrival_s for p in programs}
    spanning = [p.program_id for p in programs if p.arrival_s < restart_s < driver.run.finish[p.program_id]]
    # Each of those programs' first turn after the restart: the one whose context the new engine must find.
    returning: dict[str, RequestResult] = {}
    for r in sorted(results, key=lambda r: r.arrival_time):
        program = r.request_id.split(":")[0]
        if ":" in r.request_id and program in spanning and r.arrival_time >= restart_s and program not in returning:
            returning[program] = r
    return {
        "policy": policy.name, "programs": len(programs), "restart_s": restart_s,
        "drain_s": drained - restart_s if drained > restart_s else 0.0, "flush_s": closed - drained,
        "jct_avg_s": statistics.fmean(jct.values()), "programs_across_restart": len(spanning),
        "jct_avg_across_restart_s": statistics.fmean(jct[p] for p in spanning) if spanning else None,
        "first_turn_after_restart_ttft_avg_s": statistics.fmean(r.ttft for r in returning.values())  # type: ignore[misc]
        if returning else None,
        "first_turn_after_restart_cached_share": sum(r.num_cached_tokens for r in returning.values())
        / max(1, sum(r.num_prompt_tokens for r in returning.values())),
        "prefill_tokens_computed": first_stats.prefill_tokens + stats.prefill_tokens,
        "prefill_tokens_after_restart": stats.prefill_tokens,
        "restored_blocks": restored.restored_blocks if restored is not None else 0,
        "disk_hit_tokens_after_restart": stats.blocks.disk_hit_tokens,
        "gpu_hit_tokens_after_restart": stats.blocks.prefix_hit_tokens,
        "requests": len(results), "wall_s": round(time.perf_counter() - started, 2),
    }


def sim_restart(model: RooflineStepTime, num_blocks: int, rate: float, templates: list, scaling: ToolScaling,
                num_programs: int, chat_rate: float, seed: int, policies: tuple[str, ...] = ("pitstop",)) -> list[dict]:
    programs = make_programs(templates, num_programs, rate, scaling, seed=seed)
    chat = make_chat(chat_rate, programs[-1].arrival_s + 60, seed=seed + 1)
    restart_s = programs[len(programs) // 2].arrival_s
    variants = {"gpu-only": (0, 0, True, 1), "host-1x": (1, 0, True, 1), "host-1x+disk-16x": (1, 16, True, 1),
                "host-1x+disk-16x, index lost": (1, 16, False, 1), "host-1x+disk-16x, 4 drives": (1, 16, True, 4),
                "host-1x+disk-16x, 4 drives, index lost": (1, 16, False, 4)}
    rows = []
    for _, policy, _ in _policies(policies):
        for name, (host, disk, keep, drives) in variants.items():
            with tempfile.TemporaryDirectory(prefix="pitstop-disk-kv-sim-") as folder:
                result = restart_run(policy, programs, chat, model, num_blocks, host, disk, keep, restart_s,
                                     Path(folder) / "kv", drives)
            rows.append({"scenario": "restart", "tiers": name, "program_rate_per_s": rate, "num_blocks": num_blocks,
                         **result})
            print(f"restart at {restart_s:6.1f} s {policy.name:10s} {name:30s} jct {result['jct_avg_s']:7.1f} "
                  f"across {result['jct_avg_across_restart_s'] or 0:7.1f} first turn after: ttft "
                  f"{result['first_turn_after_restart_ttft_avg_s'] or 0:6.3f} s, "
                  f"{result['first_turn_after_restart_cached_share']:.0%} cached; prefill after "
                  f"{result['prefill_tokens_after_restart']:>9d} ({result['wall_s']} s)", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per scenario, load and policy: each tier setup's mean JCT and prefill tokens against the GPU's alone."""
    out = []
    for key in dict.fromkeys((r["scenario"], r["program_rate_per_s"], r["policy"]) for r in rows):
        group = {r["tiers"]: r for r in rows if (r["scenario"], r["program_rate_per_s"], r["policy"]) == key}
        base = group["gpu-only"]
        out.append({"scenario": key[0], "program_rate_per_s": key[1], "policy": key[2],
                    "jct_avg_s": {t: round(r["jct_avg_s"], 1) for t, r in group.items()},
                    "speedup_vs_gpu_only": {t: round(base["jct_avg_s"] / r["jct_avg_s"], 3) for t, r in group.items()},
                    "prefill_tokens_computed": {t: r["prefill_tokens_computed"] for t, r in group.items()}})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_arguments(parser)  # bench/agents.py's
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--restart-rate", type=float, default=0.2, help="program arrival rate of the restart run")
    parser.add_argument("--torch-prompt-tokens", type=int, default=2048)
    parser.add_argument("--torch-layers", type=int, default=8)
    parser.add_argument("--torch-hidden", type=int, default=512)
    parser.add_argument("--torch-repeats", type=int, default=3)
    parser.add_argument("--disk-dir", type=Path, default=None, help="where the torch part's disk tier goes "
                        "(default: the system's temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "disk_kv.json")
    args = parser.parse_args(argv)
    rates = args.rates or [0.1, 0.2]
    if args.quick:
        args.programs, rates, args.torch_prompt_tokens, args.torch_layers, args.torch_repeats = 10, [0.2], 512, 2, 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    templates = load_templates()
    scaling = ToolScaling(args.tool_scale, args.test_run_scale)
    model = RooflineStepTime.builtin(args.model)
    num_blocks = int(model.kv_capacity_blocks(16) * args.kv_fraction)
    rows = sim_tiers(model, num_blocks, rates, templates, scaling, args.programs, args.chat_rate, args.seed,
                     TIERS | {NO_READ_AHEAD: TIERS["host-1x+disk-16x"]})
    rows += sim_restart(model, num_blocks, args.restart_rate, templates, scaling, args.programs, args.chat_rate,
                        args.seed)
    torch_part = None
    if not args.skip_torch:
        from bench.disk_kv_torch import time_to_first_token

        torch_part = time_to_first_token(args.torch_prompt_tokens, args.torch_layers, args.torch_hidden,
                                         args.torch_repeats, args.disk_dir)
    report = {
        "command": command("bench.disk_kv", argv), "machine": machine_info(),
        "workload": workload_record(args, model=args.model, gpu="H100-SXM", rates=rates,
                                    restart_rate=args.restart_rate),
        "tiers": {name: {"host_blocks_per_gpu_block": h, "disk_blocks_per_gpu_block": d, "drives": n}
                  for name, (h, d, n) in TIERS.items()},
        "disk": {"read_bytes_per_s": model.gpu.disk_read_bytes_per_s, "write_bytes_per_s": model.gpu.disk_write_bytes_per_s,
                 "efficiency": model.disk_efficiency, "host_link_bytes_per_s": model.gpu.host_link_bytes_per_s},
        "summary": summary(rows), "runs": rows, "torch_cpu": torch_part,
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
