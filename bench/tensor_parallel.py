"""Tensor parallelism (`--tensor-parallel-size`): what sharding a model over ranks costs and buys.

Torch runner on this CPU, a random-weight model (4 layers, hidden 1024 by default): one rank on one
thread, one rank on as many threads as there are ranks (the same cores, shared inside one matmul), and
N ranks of one thread each (N processes meeting at all-reduces, two a layer, through shared memory or
through gloo), side by side in alternating rounds: the median decode step at several batch sizes, the prefill of one prompt, and the
teacher-forced scores of N ranks against one rank's. The roofline part prices Llama-3.1-70B on 1 to 8
H100s: weights and KV per GPU and step times (the roofline leaves all-reduce time out; engine/roofline.py).
Writes bench/results/tensor_parallel.json.

    .venv/bin/python -m bench.tensor_parallel            # full run (about 4 minutes on 2 cores)
    .venv/bin/python -m bench.tensor_parallel --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from pathlib import Path

from bench.common import command, machine_info, write_report
from bench.torch_variants import decode_step_variants, prefill_step_variants, score_variants
from engine.batch import StepShape
from engine.roofline import RooflineStepTime

RESULTS = Path(__file__).parent / "results"
GiB = 1 << 30


def variants(ranks: int) -> dict[str, dict]:
    return {"1 rank, 1 thread": {"threads": 1}, f"1 rank, {ranks} threads": {"threads": ranks},
            f"{ranks} ranks, 1 thread each": {"threads": 1, "tensor_parallel_size": ranks},
            f"{ranks} ranks, 1 thread each, gloo": {"threads": 1, "tensor_parallel_size": ranks,
                                                    "shared_memory_allreduce": False}}


def roofline_rows() -> list[dict]:
    """Llama-3.1-70B on 1-8 H100s, bf16: what each GPU holds and how long a step takes."""
    rows = []
    for tp in (1, 2, 4, 8):
        model = RooflineStepTime.builtin("llama-3.1-70b", tensor_parallel=tp)
        try:
            kv_tokens = model.kv_capacity_blocks(16) * 16
        except ValueError:  # the weights leave no room
            kv_tokens = 0
        rows.append({"tensor_parallel": tp, "weights_gib_per_gpu": round(model.model.weight_memory_bytes / tp / GiB, 2),
                     "kv_tokens": kv_tokens,
                     "decode_step_ms": {str(b): round(model.predict(StepShape(0, 0, b, b * 2048, 0)) * 1e3, 3)
                                        for b in (1, 32)},
                     "prefill_4096_ms": round(model.predict(StepShape(4096, 1, 0, 4096, 4096 * 4097 // 2)) * 1e3, 2)})
    return rows


def torch_part(args: argparse.Namespace) -> dict:
    from engine.tiny_model import make_tiny_model

    tmp = tempfile.TemporaryDirectory(prefix="pitstop-tp-")
    model_dir = make_tiny_model(Path(tmp.name) / "model", layers=4, hidden=args.hidden, heads=8, kv_heads=4,
                                vocab_size=4096, max_position_embeddings=4096)
    runs = variants(args.ranks)
    names = list(runs)
    decode = []
    for batch in args.decode_batches:
        medians = decode_step_variants(model_dir, batch, args.decode_context, args.decode_steps, args.decode_rounds,
                                       runs)
        decode.append({"batch": batch, "context": args.decode_context, "median_step_ms": medians,
                       "speedup_over_one_thread": {n: round(medians[names[0]] / ms, 3) for n, ms in medians.items()}})
        print(f"decode batch {batch}: " + ", ".join(f"{n}: {ms:.2f} ms" for n, ms in medians.items()), flush=True)
    prefill = prefill_step_variants(model_dir, args.prefill_len, args.decode_rounds, runs)
    print("prefill: " + ", ".join(f"{n}: {ms:.1f} ms" for n, ms in prefill.items()), flush=True)
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(4096) for _ in range(args.score_len)] for _ in range(args.score_prompts)]
    accuracy = score_variants(model_dir, prompts, {names[0]: runs[names[0]], names[2]: runs[names[2]]})
    return {"model": f"random weights: 4 layers, hidden {args.hidden}, 8 heads, 4 KV heads, vocab 4096, float32",
            "ranks": args.ranks, "all_reduces_per_step": 2 * 4, "decode": decode,
            "prefill": {"tokens": args.prefill_len, "median_step_ms": prefill,
                        "speedup_over_one_thread": {n: round(prefill[names[0]] / ms, 3) for n, ms in prefill.items()}},
            "accuracy": accuracy}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--decode-context", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=10)
    parser.add_argument("--decode-rounds", type=int, default=5)
    parser.add_argument("--prefill-len", type=int, default=512)
    parser.add_argument("--score-prompts", type=int, default=4)
    parser.add_argument("--score-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smaller model and fewer steps (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tensor_parallel.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.decode_batches, args.decode_rounds, args.prefill_len = 256, [4], 2, 128
        args.score_prompts, args.score_len = 1, 64
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = {"command": command("bench.tensor_parallel", argv), "machine": machine_info(),
              "roofline_llama_3_1_70b_h100": roofline_rows(), "torch_cpu": torch_part(args)}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
