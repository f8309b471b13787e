"""W4A16 weights (`--quantization int4`, 4 bits in groups of 128 with zero points) against the model's own
dtype and W8A8 (int8) on the torch runner on this CPU, on a random-weight model big enough that the
projections' weights dominate (4 layers, hidden 2048, MLP 5632, vocab 4096: 0.19 B parameters).

Side by side: the weights' bytes as loaded; each variant's process RSS after loading the model (and its
peak while loading), each in a fresh process, plus int4 read from a `pitstop engine quantize --quantization
int4` checkpoint rather than quantized from the float32 one at load; decode tokens/s at batch 1 and 4
(median steps in alternating rounds, one torch thread); and teacher-forced accuracy against float32 (the true
tokens' log-probabilities, mean |difference|, and how often the top-1 token is float32's). Also the
weight error of symmetric against asymmetric rounding at group 128 on this model's projections and on a
heavy-tailed (Student-t, 3 degrees of freedom) matrix: why the flag stores zero points; and what the
roofline prices for Llama-3.1-8B on an H100 in bf16, int8 and int4 (machine-independent).

A random model's near-flat distributions flip their top token far more easily than a trained one's: the
accuracy rows compare variants, they do not predict a real model's quality. Writes
bench/results/engine_int4.json.

    .venv/bin/python -m bench.engine_int4            # full run (about 7 minutes on 2 cores, one thread)
    .venv/bin/python -m bench.engine_int4 --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import command, machine_info, write_report
from bench.torch_variants import decode_step_variants, score_variants

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"float32": {}, "int8": {"quantization": "int8"}, "int4": {"quantization": "int4"}}
MIB = 1 << 20


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def probe(model_dir: str, quantization: str | None) -> dict:
    """In this (fresh) process: RSS before and after building a runner on `model_dir`, its peak, and the
    bytes of the model's parameters and buffers (all, and the projections')."""
    import torch

    from engine.torch_runner import TorchModelRunner

    before = _status_mib("VmRSS")
    runner = TorchModelRunner(model_dir, 16, 16, device="cpu", dtype=torch.float32, quantization=quantization)
    tensors = [*runner.model.named_parameters(), *runner.model.named_buffers()]
    total = sum(t.numel() * t.element_size() for _, t in tensors)
    projections = sum(t.numel() * t.element_size() for name, t in tensors if "_proj." in name)
    kv = runner.kv_cache.numel() * runner.kv_cache.element_size()
    return {"rss_before_load_mib": round(before, 1), "rss_after_load_mib": round(_status_mib("VmRSS"), 1),
            "peak_rss_mib": round(_status_mib("VmHWM"), 1), "kv_cache_mib": round(kv / MIB, 1),
            "weight_mib": round(total / MIB, 1), "projection_weight_mib": round(projections / MIB, 1)}


def memory(model_dir: Path, int4_checkpoint: Path) -> dict:
    runs = {name: (model_dir, options.get("quantization")) for name, options in VARIANTS.items()}
    runs["int4 (from its checkpoint)"] = (int4_checkpoint, None)
    out = {}
    for name, (folder, quantization) in runs.items():
        code = (f"import json; from bench.engine_int4 import probe; "
                f"print(json.dumps(probe({str(folder)!r}, {quantization!r})))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"memory {name}: {out[name]}", flush=True)
    return out


def rounding_error(model_dir: Path, group: int = 128) -> dict:
    """Relative weight error (Frobenius) of symmetric and asymmetric round-to-nearest in groups of `group`."""
    import torch
    from safetensors.torch import load_file

    from engine.model.int4_formats import quantize_groups

    def error(weight: torch.Tensor, symmetric: bool) -> float:
        values, scales, zeros = quantize_groups(weight, group, symmetric)
        back = (values.float() - zeros.float().repeat_interleave(group, 1)) * scales.repeat_interleave(group, 1)
        return ((back - weight.float()).norm() / weight.float().norm()).item()

    tensors = load_file(model_dir / "model.safetensors")
    projections = [t for name, t in tensors.items() if name.endswith("_proj.weight")]
    torch.manual_seed(0)
    heavy = torch.distributions.StudentT(3.0).sample((2048, 2048)).float()
    out = {}
    for name, weights in (("model_projections", projections), ("student_t_3", [heavy])):
        out[name] = {kind: round(sum(error(w, kind == "symmetric") * w.numel() for w in weights)
                                 / sum(w.numel() for w in weights), 4) for kind in ("symmetric", "asymmetric")}
    return out


def roofline() -> dict:
    """What the roofline (engine/roofline.py) prices on one H100 for Llama-3.1-8B, bf16 against int8 and int4:
    the weights, the KV tokens beside them, a decode step of 1 and 32 sequences at 2,048 tokens of context
    and a 4,096-token prefill."""
    from engine.batch import StepShape
    from engine.roofline import RooflineStepTime

    out = {}
    for quantization in (None, "int8", "int4"):
        model = RooflineStepTime.builtin("llama-3.1-8b", "H100-SXM", quantization=quantization)
        out[quantization or "bf16"] = {
            "weights_gib": round(model.model.weight_memory_bytes / (1 << 30), 2),
            "kv_tokens": model.kv_capacity_blocks(16) * 16,
            "decode_step_ms": {str(batch): round(model.predict(StepShape(0, 0, batch, batch * 2048, 0)) * 1e3, 3)
                               for batch in (1, 32)},
            "prefill_4096_ms": round(model.predict(StepShape(4096, 1, 0, 4096, 4096 * 4097 // 2)) * 1e3, 2)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)  # one: steadier beside other tenants of 2 cores
    parser.add_argument("--score-prompts", type=int, default=3)
    parser.add_argument("--score-len", type=int, default=192)
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--decode-context", type=int, default=192)
    parser.add_argument("--decode-steps", type=int, default=6)
    parser.add_argument("--decode-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_int4.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.intermediate, args.layers = 512, 1408, 2
        args.score_prompts, args.score_len, args.decode_rounds = 2, 128, 2

    import torch

    from engine.quantize_checkpoint import quantize_checkpoint
    from engine.tiny_model import make_tiny_model

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-int4-")
    heads = args.hidden // 128
    model_dir = make_tiny_model(Path(tmp.name) / "model", layers=args.layers, hidden=args.hidden, heads=heads,
                                kv_heads=max(1, heads // 2), intermediate=args.intermediate, vocab_size=4096,
                                max_position_embeddings=4096, seed=args.seed)
    int4_checkpoint = quantize_checkpoint(model_dir, Path(tmp.name) / "model-int4", "int4")
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(4096) for _ in range(args.score_len)] for _ in range(args.score_prompts)]
    decode = []
    for batch in args.decode_batches:
        medians = decode_step_variants(model_dir, batch, args.decode_context, args.decode_steps, args.decode_rounds,
                                       VARIANTS)
        decode.append({"batch": batch, "context": args.decode_context, "median_step_ms": medians,
                       "tokens_per_s": {name: round(batch * 1e3 / ms, 1) for name, ms in medians.items()},
                       "speedup": {name: round(medians["float32"] / ms, 3) for name, ms in medians.items()}})
        print(f"decode batch {batch}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in medians.items()), flush=True)
    report = {
        "command": command("bench.engine_int4", argv), "machine": machine_info(),
        "model": {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate, "heads": heads,
                  "kv_heads": max(1, heads // 2), "vocab": 4096, "dtype": "float32", "weights": "random"},
        "int4": "W4A16: 4-bit weights, groups of 128 input columns with a scale and zero point each, asymmetric; "
                "the CPU's tinygemm kernel with bf16 activations",
        "memory": memory(model_dir, int4_checkpoint),
        "decode": decode,
        "accuracy": score_variants(model_dir, prompts, VARIANTS),
        "rounding_error_group_128": rounding_error(model_dir),
        "roofline_llama_3_1_8b_h100": roofline(),
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
