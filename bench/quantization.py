"""W8A8 weight quantization (`--quantization int8|fp8`) against the model's own dtype: what the smaller
weights buy agents on GPUs, what they cost in accuracy, and what the 8-bit matmuls do on this CPU.

Simulated runner (roofline step times): bench/agents.py's workload (SWE-agent programs with their
recorded tool times, background chat) on Llama-3.1-8B on one H100 and Llama-3.1-70B on four, served
bf16 or with W8A8 projections (fp8 and int8 price the same on an H100: one byte a weight, 1,979 T
FLOP/s): the weights stream half the bytes a decode step and the projections multiply twice as fast,
and the bytes they free hold KV. The engine gets `--kv-fraction` of the KV memory beside the bf16
weights, plus what quantization frees (the whole GPU at 1.0), with Pitstop's pinning policy.

Torch runner on this CPU, a random-weight model (4 layers, hidden 1024): teacher-forced scoring against
float32 (the true tokens' log-probabilities, the top-1 token), the median decode step at several batch
sizes and the prefill of one prompt, float32, int8 and fp8 side by side in alternating rounds, and the
weights' bytes. Writes bench/results/quantization.json.

    .venv/bin/python -m bench.quantization            # full run (about 8 minutes on 2 cores)
    .venv/bin/python -m bench.quantization --quick    # smaller, for a smoke test"""

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
from bench.torch_variants import decode_step_variants, prefill_step_variants, score_variants
from engine.batch import StepShape
from engine.roofline import RooflineStepTime

RESULTS = Path(__file__).parent / "results"
RATES = {"llama-3.1-8b": [0.2, 0.4], "llama-3.1-70b": [0.1, 0.2]}
VARIANTS = {"float32": {}, "int8": {"quantization": "int8"}, "fp8": {"quantization": "fp8"}}
GiB = 1 << 30


def capacity() -> list[dict]:
    """Weights and the KV tokens that fit beside them (90% of GPU memory, a 2 GiB reserve), and the
    roofline's decode and prefill steps, bf16 against W8A8, on H100s; 70B on two only fits quantized."""
    rows = []
    for model_name, tp in (("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("llama-3.1-70b", 2)):
        row: dict = {"model": model_name, "tensor_parallel": tp, "gpu": "H100-SXM"}
        for quantization in (None, "int8"):
            model = RooflineStepTime.builtin(model_name, tensor_parallel=tp, quantization=quantization)
            key = quantization or "bf16"
            row.setdefault("weights_gib_per_gpu", {})[key] = round(model.model.weight_memory_bytes / tp / GiB, 2)
            try:
                row.setdefault("kv_tokens", {})[key] = model.kv_capacity_blocks(16) * 16
            except ValueError:  # no room for KV beside the weights
                row["kv_tokens"][key] = 0
            row.setdefault("decode_step_ms", {})[key] = {
                str(batch): round(model.predict(StepShape(0, 0, batch, batch * 2048, 0)) * 1e3, 3) for batch in (1, 32, 128)}
            row.setdefault("prefill_4096_ms", {})[key] = round(
                model.predict(StepShape(4096, 1, 0, 4096, 4096 * 4097 // 2)) * 1e3, 2)
        rows.append(row)
    return rows


def sim_sweep(args: argparse.Namespace, templates: list, scaling: ToolScaling) -> list[dict]:
    rows = []
    policies = [p for p in POLICIES if p.name in args.policies]
    for model_name, (tp, _) in MODELS.items():
        if args.models and model_name not in args.models:
            continue
        bf16 = RooflineStepTime.builtin(model_name, tensor_parallel=tp)
        block_bytes = bf16.model.kv_bytes_per_token * 16
        for fraction in args.kv_fractions:
            kv_bytes = bf16.kv_capacity_blocks(16) * block_bytes * fraction
            for rate in args.rates or RATES[model_name][: args.max_rates]:
                programs = make_programs(templates, args.programs, rate, scaling, seed=args.seed)
                chat = make_chat(args.chat_rate, programs[-1].arrival_s + 60, seed=args.seed + 1)
                for quantization in (None, "int8"):
                    model = bf16.with_quantization(quantization)
                    freed = bf16.model.weight_memory_bytes - model.model.weight_memory_bytes
                    num_blocks = int((kv_bytes + freed) // block_bytes)
                    for policy in policies:
                        config = SessionsConfig(attention_knee_tokens=attention_knee_tokens(model))
                        result = run_policy(policy, programs, chat, model, num_blocks, config=config)
                        rows.append({"runner": "simulated", "model": model_name, "tensor_parallel": tp,
                                     "quantization": quantization or "bf16", "kv_fraction": fraction,
                                     "num_blocks": num_blocks, "program_rate_per_s": rate, **result})
                        print(f"{model_name:14s} kv {fraction:4.2f} rate {rate:5.3f} {quantization or 'bf16':5s} "
                              f"{policy.name:10s} jct {result['jct_avg_s']:7.1f} p90 {result['jct_p90_s']:7.1f} "
                              f"prefill {result['prefill_tokens_computed']:>9d} ({result['wall_s']} s)", flush=True)
    return rows


def sim_summary(rows: list[dict]) -> list[dict]:
    """Per model, KV budget, load and policy: JCT bf16 over W8A8 (> 1: faster quantized)."""
    out = []
    keys = dict.fromkeys((r["model"], r["kv_fraction"], r["program_rate_per_s"], r["policy"]) for r in rows)
    for key in keys:
        runs = {r["quantization"]: r for r in rows
                if (r["model"], r["kv_fraction"], r["program_rate_per_s"], r["policy"]) == key}
        bf16, int8 = runs["bf16"], runs["int8"]
        out.append({"model": key[0], "kv_fraction": key[1], "program_rate_per_s": key[2], "policy": key[3],
                    "num_blocks": {"bf16": bf16["num_blocks"], "w8a8": int8["num_blocks"]},
                    "jct_avg_s": {"bf16": round(bf16["jct_avg_s"], 1), "w8a8": round(int8["jct_avg_s"], 1)},
                    "jct_p90_s": {"bf16": round(bf16["jct_p90_s"], 1), "w8a8": round(int8["jct_p90_s"], 1)},
                    "avg_speedup": round(bf16["jct_avg_s"] / int8["jct_avg_s"], 3),
                    "p90_speedup": round(bf16["jct_p90_s"] / int8["jct_p90_s"], 3),
                    "prefill_tokens_computed": {"bf16": bf16["prefill_tokens_computed"],
                                                "w8a8": int8["prefill_tokens_computed"]}})
    return out


def weight_bytes(model_dir: Path) -> dict:
    """Bytes of the runner's parameters per variant: all of them, and the projections'."""
    import torch

    from engine.torch_runner import TorchModelRunner

    out = {}
    for name, options in VARIANTS.items():
        runner = TorchModelRunner(model_dir, 4, 16, device="cpu", dtype=torch.float32, **options)
        params = dict(runner.model.named_parameters())
        projections = sum(p.numel() * p.element_size() for n, p in params.items() if "_proj." in n)
        out[name] = {"all": sum(p.numel() * p.element_size() for p in params.values()), "projections": projections}
    return out


def torch_part(args: argparse.Namespace) -> dict:
    import torch

    from engine.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-quantization-")
    model_dir = make_tiny_model(Path(tmp.name) / "model", layers=4, hidden=args.hidden, heads=8, kv_heads=4,
                                vocab_size=4096, max_position_embeddings=4096)
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(4096) for _ in range(args.score_len)] for _ in range(args.score_prompts)]
    decode = []
    for batch in args.decode_batches:
        medians = decode_step_variants(model_dir, batch, args.decode_context, args.decode_steps, args.decode_rounds,
                                       VARIANTS)
        decode.append({"batch": batch, "context": args.decode_context, "median_step_ms": medians,
                       "speedup": {name: round(medians["float32"] / ms, 3) for name, ms in medians.items()}})
        print(f"torch decode batch {batch}: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in medians.items()), flush=True)
    prefill = prefill_step_variants(model_dir, args.prefill_len, args.decode_rounds, VARIANTS)
    print("torch prefill: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in prefill.items()), flush=True)
    return {"model": f"random weights: 4 layers, hidden {args.hidden}, 8 heads, 4 KV heads, vocab 4096, float32",
            "threads": 1, "weight_bytes": weight_bytes(model_dir),
            "accuracy": score_variants(model_dir, prompts, VARIANTS), "decode": decode,
            "prefill": {"tokens": args.prefill_len, "median_step_ms": prefill,
                        "speedup": {name: round(prefill["float32"] / ms, 3) for name, ms in prefill.items()}}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_arguments(parser)  # bench/agents.py's
    parser.add_argument("--kv-fractions", type=float, nargs="+", default=[1.0, 0.25],
                        help="shares of the KV memory beside bf16 weights (quantization adds what it frees)")
    parser.add_argument("--policies", nargs="+", default=["pitstop"])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--score-prompts", type=int, default=8)
    parser.add_argument("--score-len", type=int, default=512)
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--decode-context", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=10)
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--out", type=Path, default=RESULTS / "quantization.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.programs, args.max_rates, args.kv_fractions = 10, 1, [0.25]
        args.models = args.models or ["llama-3.1-8b"]
        args.hidden, args.score_prompts, args.score_len = 256, 2, 128
        args.decode_batches, args.decode_rounds, args.prefill_len = [4], 2, 128
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = sim_sweep(args, load_templates(), ToolScaling(args.tool_scale, args.test_run_scale))
    report = {
        "command": command("bench.quantization", argv), "machine": machine_info(),
        "capacity": capacity(),
        "workload": workload_record(args, kv_fraction=args.kv_fractions),
        "summary": sim_summary(rows), "runs": rows,
        "torch_cpu": None if args.skip_torch else torch_part(args),
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
