"""An fp8 KV cache (`--kv-cache-dtype fp8`) against the model's own dtype: what the halved KV buys agents
under memory pressure, what it costs in accuracy, and what its reads cost on this CPU.

Simulated runner (roofline step times): bench/agents.py's workload (SWE-agent programs with their
recorded tool times, background chat) on Llama-3.1-8B on one H100 and Llama-3.1-70B on four, the engine
given a quarter of the KV memory that fits (`--kv-fraction`), stored bf16 or fp8: fp8 holds twice the
blocks in those bytes and decodes read half the bytes. Three pinning policies each way.

Torch runner on this CPU, a 4-layer random-weight model: teacher-forced scoring of prompts in 64-token
chunks (each chunk reads the earlier ones' KV back from the cache), fp32 cache against fp8 (e4m3, e5m2):
the true tokens' log-probabilities and the top-1 token; and the median decode step, side by side in
alternating rounds. Writes bench/results/kv_fp8.json.

    .venv/bin/python -m bench.kv_fp8            # full run (about 6 minutes on 2 cores)
    .venv/bin/python -m bench.kv_fp8 --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

from agent_sessions.config import SessionsConfig
from bench.agent_sim import POLICIES, attention_knee_tokens, make_chat, run_policy
from bench.agent_workload import ToolScaling, load_templates, make_programs
from bench.agents import MODELS, workload_arguments, workload_record
from bench.common import command, machine_info, write_report
from bench.torch_variants import decode_step_variants, score_variants
from engine.roofline import RooflineStepTime

RESULTS = Path(__file__).parent / "results"
POLICY_NAMES = ("no-pinning", "fixed-2s", "pitstop")
KV_DTYPES = ("auto", "fp8")
RATES = {"llama-3.1-8b": [0.2, 0.4], "llama-3.1-70b": [0.1, 0.2]}


def capacity() -> list[dict]:
    """KV tokens that fit beside the weights (90% of GPU memory, a 2 GiB reserve), bf16 and fp8."""
    rows = []
    for model_name, (tp, _) in MODELS.items():
        fits = {dtype: RooflineStepTime.builtin(model_name, tensor_parallel=tp, kv_cache_dtype=dtype)
                .kv_capacity_blocks(16) * 16 for dtype in KV_DTYPES}
        rows.append({"model": model_name, "tensor_parallel": tp, "gpu": "H100-SXM", "kv_tokens": fits,
                     "ratio": round(fits["fp8"] / fits["auto"], 3)})
    return rows


def sim_sweep(args: argparse.Namespace, templates: list, scaling: ToolScaling) -> list[dict]:
    rows = []
    policies = [p for p in POLICIES if p.name in POLICY_NAMES]
    for model_name, (tp, _) in MODELS.items():
        if args.models and model_name not in args.models:
            continue
        bf16 = RooflineStepTime.builtin(model_name, tensor_parallel=tp)
        memory_blocks = int(bf16.kv_capacity_blocks(16) * args.kv_fraction)  # the bf16 blocks the memory holds
        for rate in args.rates or RATES[model_name][: args.max_rates]:
            programs = make_programs(templates, args.programs, rate, scaling, seed=args.seed)
            chat = make_chat(args.chat_rate, programs[-1].arrival_s + 60, seed=args.seed + 1)
            for dtype in KV_DTYPES:
                model = bf16.with_kv_cache_dtype(dtype)
                num_blocks = memory_blocks * bf16.model.kv_bytes // model.model.kv_bytes  # the same bytes
                for policy in policies:
                    config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
                    result = run_policy(policy, programs, chat, model, num_blocks, config=config)
                    rows.append({"runner": "simulated", "model": model_name, "tensor_parallel": tp,
                                 "kv_cache_dtype": dtype, "num_blocks": num_blocks, "program_rate_per_s": rate,
                                 **result})
                    print(f"{model_name:14s} rate {rate:5.3f} kv {dtype:5s} {policy.name:12s} "
                          f"jct {result['jct_avg_s']:7.1f} p90 {result['jct_p90_s']:7.1f} "
                          f"prefill {result['prefill_tokens_computed']:>9d} ({result['wall_s']} s)", flush=True)
    return rows


def sim_summary(rows: list[dict]) -> list[dict]:
    """Per model, load and policy: mean and p90 JCT with fp8 against bf16 (> 1: faster with fp8)."""
    out = []
    for key in dict.fromkeys((r["model"], r["program_rate_per_s"], r["policy"]) for r in rows):
        runs = {r["kv_cache_dtype"]: r for r in rows if (r["model"], r["program_rate_per_s"], r["policy"]) == key}
        auto, fp8 = runs["auto"], runs["fp8"]
        out.append({"model": key[0], "program_rate_per_s": key[1], "policy": key[2],
                    "jct_avg_s": {"auto": round(auto["jct_avg_s"], 1), "fp8": round(fp8["jct_avg_s"], 1)},
                    "jct_p90_s": {"auto": round(auto["jct_p90_s"], 1), "fp8": round(fp8["jct_p90_s"], 1)},
                    "avg_speedup": round(auto["jct_avg_s"] / fp8["jct_avg_s"], 3),
                    "p90_speedup": round(auto["jct_p90_s"] / fp8["jct_p90_s"], 3),
                    "prefill_tokens_computed": {"auto": auto["prefill_tokens_computed"],
                                                "fp8": fp8["prefill_tokens_computed"]}})
    return out


KV_VARIANTS = {"auto": {"kv_cache_dtype": "auto"}, "fp8": {"kv_cache_dtype": "fp8"},
               "fp8_e5m2": {"kv_cache_dtype": "fp8_e5m2"}}


def torch_accuracy(model_dir: Path, prompts: list[list[int]]) -> dict:
    """Teacher-forced scores of `prompts` with each KV storage, against the fp32 cache's."""
    out = score_variants(model_dir, prompts, KV_VARIANTS)
    out["mean_abs_logprob_fp32"] = out.pop("mean_abs_logprob_reference")
    del out["reference"]
    return out


def torch_decode_steps(model_dir: Path, batch: int, context: int, steps: int, rounds: int) -> dict:
    """Median decode step of `batch` sequences at `context` tokens, fp32 and fp8 caches alternating."""
    medians = decode_step_variants(model_dir, batch, context, steps, rounds,
                                   {name: KV_VARIANTS[name] for name in ("auto", "fp8")})
    print(f"torch decode batch {batch} context {context}: fp32 {medians['auto']:.2f} ms, fp8 {medians['fp8']:.2f} ms",
          flush=True)
    return {"batch": batch, "context": context, "median_step_ms": medians,
            "fp8_over_fp32": round(medians["fp8"] / medians["auto"], 3), "steps_each": steps * rounds}


def torch_part(args: argparse.Namespace) -> dict:
    import torch

    from engine.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-kv-fp8-")
    model_dir = make_tiny_model(Path(tmp.name) / "tiny", layers=4, hidden=256, heads=4, kv_heads=2, vocab_size=4096,
                                max_position_embeddings=4096)
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(4096) for _ in range(args.score_len)] for _ in range(args.score_prompts)]
    return {"model": "random weights: 4 layers, hidden 256, 4 heads, 2 KV heads of 64, vocab 4096, float32",
            "accuracy": torch_accuracy(model_dir, prompts),
            "decode": [torch_decode_steps(model_dir, batch, context, args.decode_steps, args.decode_rounds)
                       for batch, context in args.decode_shapes]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_arguments(parser)  # bench/agents.py's
    parser.add_argument("--score-prompts", type=int, default=8)
    parser.add_argument("--score-len", type=int, default=512)
    parser.add_argument("--decode-shapes", type=lambda s: tuple(int(x) for x in s.split("x")), nargs="*",
                        default=[(8, 512), (8, 2048)], metavar="BATCHxCONTEXT")
    parser.add_argument("--decode-steps", type=int, default=10)
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "kv_fp8.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.programs, args.max_rates = 10, 1
        args.models = args.models or ["llama-3.1-8b"]
        args.score_prompts, args.score_len, args.decode_shapes, args.decode_rounds = 2, 128, [(4, 256)], 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    templates = load_templates()
    rows = sim_sweep(args, templates, ToolScaling(args.tool_scale, args.test_run_scale))
    report = {
        "command": command("bench.kv_fp8", argv), "machine": machine_info(),
        "capacity": capacity(),
        "workload": workload_record(args),
        "summary": sim_summary(rows), "runs": rows,
        "torch_cpu": None if args.skip_torch else torch_part(args),
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
