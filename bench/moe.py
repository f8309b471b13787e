"""What a mixture-of-experts layer costs on Pitstop's engine, next to transformers' on the same weights.

    .venv/bin/python -m bench.moe [--reps 7] [--threads 1]

One sparse MLP layer at half of Qwen3-30B-A3B's shape (hidden 1024, 64 experts of width 384, 8 per
token, float32: 302 MB of expert weights, far past any cache) runs a step of 1 to 1,024 tokens (decode
batches up to a prefill chunk), four ways, alternating within each repetition on identical inputs:
- pitstop_grouped: `engine/model/moe.py` as the engine runs it on CPU: pairs sorted by expert once,
  both projections as one `torch.nn.functional.grouped_mm` each;
- pitstop_looped: the same routing, a loop over the experts that got tokens (the engine's path
  where grouped_mm has no kernel);
- transformers_grouped_mm and transformers_eager: transformers' Qwen3MoeSparseMoeBlock with its
  default `experts_implementation` ("grouped_mm") and with "eager" (its per-expert loop).
Each is timed on this thread's CPU clock (median of `--reps`), its output checked against
pitstop_grouped's. Per token count it also records the distinct experts the tokens chose, next to
the balanced-routing expectation the roofline uses (`engine/roofline.py`, E x (1 - (1 - k/E)^T)):
a decode step's cost follows the experts it reads until all are read.

Writes bench/results/moe.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, THREADS_HELP, command, machine_info, write_report  # noqa: E402
from engine.model.config import ModelConfig  # noqa: E402
from engine.model.moe import SparseMoE  # noqa: E402
from engine.roofline import ModelShape  # noqa: E402

OUT = RESULTS / "moe.json"
SHAPE = {"hidden_size": 1024, "moe_intermediate_size": 384, "num_experts": 64, "num_experts_per_tok": 8}
TOKENS = (1, 4, 16, 64, 256, 1024)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    return parser.parse_args(argv)


def build_layers() -> tuple[SparseMoE, dict[str, torch.nn.Module]]:
    """Pitstop's layer with seeded weights, and transformers' block (both implementations) holding them."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    raw = {"model_type": "qwen3_moe", "vocab_size": 256, "intermediate_size": 1024, "num_hidden_layers": 1,
           "num_attention_heads": 8, "num_key_value_heads": 8, "norm_topk_prob": True, **SHAPE}  # fmt: skip
    ours = SparseMoE(ModelConfig.from_dict(raw)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in ours.named_parameters():
            gain = 4.0 if name == "gate.weight" else 1.0  # decisive routing, as the tiny models'
            param.copy_(torch.randn(param.shape, generator=gen) * gain / param.shape[-1] ** 0.5)
    theirs = {}
    for implementation in ("grouped_mm", "eager"):
        config = Qwen3MoeConfig(**{k: v for k, v in raw.items() if k != "model_type"})
        model = AutoModelForCausalLM.from_config(config, experts_implementation=implementation)
        block = model.model.layers[0].mlp.eval()
        with torch.no_grad():
            block.gate.weight.copy_(ours.gate.weight)
            block.experts.gate_up_proj.copy_(ours.experts.gate_up_proj)
            block.experts.down_proj.copy_(ours.experts.down_proj)
        theirs[f"transformers_{implementation}"] = block
    return ours, theirs


def cpu_seconds(fn: object, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.thread_time()
    out = fn(x)  # type: ignore[operator]
    return time.thread_time() - start, out


def kernels_section(reps: int) -> list[dict]:
    ours, theirs = build_layers()
    variants = {
        "pitstop_grouped": lambda x: ours(x, grouped=True),
        "pitstop_looped": lambda x: ours(x, grouped=False),
        **{name: (lambda x, block=block: block(x[None])[0]) for name, block in theirs.items()},
    }
    shape = ModelShape("bench", 1, SHAPE["hidden_size"], 8, 8, 0, 256, num_experts=SHAPE["num_experts"],
                       experts_per_token=SHAPE["num_experts_per_tok"], num_sparse_layers=1)  # fmt: skip
    rows = []
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for tokens in TOKENS:
            x = torch.randn(tokens, SHAPE["hidden_size"], generator=gen)
            reference = ours(x, grouped=True)
            times: dict[str, list[float]] = {name: [] for name in variants}
            for fn in variants.values():  # warm-up, and every variant's answer checked
                torch.testing.assert_close(fn(x), reference, atol=1e-4, rtol=1e-4)
            for _ in range(reps):
                for name, fn in variants.items():
                    times[name].append(cpu_seconds(fn, x)[0])
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            _, experts = ours.route(x)
            base = medians["transformers_grouped_mm"]
            rows.append({
                "tokens": tokens,
                "ms": {name: round(m * 1e3, 3) for name, m in medians.items()},
                "speedup_vs_transformers_grouped_mm": {name: round(base / m, 3) for name, m in medians.items()},
                "experts_read": int(experts.unique().numel()),
                "pitstop_grouped_ms_per_expert_read": round(medians["pitstop_grouped"] * 1e3 / experts.unique().numel(), 3),
                "experts_read_balanced_expectation": round(shape.experts_read(tokens), 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    expert_mb = 3 * SHAPE["hidden_size"] * SHAPE["moe_intermediate_size"] * SHAPE["num_experts"] * 4 / 1e6
    report = {"command": command("bench.moe", argv), "machine": machine_info(),
              "layer": {**SHAPE, "dtype": "float32", "expert_weights_mb": round(expert_mb, 1),
                        "threads": args.threads, "reps": args.reps},
              "steps": kernels_section(args.reps)}  # fmt: skip
    write_report(OUT, report)
    return report


if __name__ == "__main__":
    main()
