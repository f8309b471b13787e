"""Gemma 3 and Phi-3 against Llama of the same size in Pitstop's engine on CPU, side by side in one run, and
the roofline's predicted H100 decode step for the built-in real configs.

    .venv/bin/python -m bench.engine_families [--layers 4] [--hidden 512] [--reps 3] [--threads N]

Each family is a make_tiny_model folder of the same shape (layers, hidden, 8 heads, 4 KV heads, the same MLP
width and vocabulary): what differs is the family's own work (Gemma 3's four norms a layer, q/k norms, GELU,
scaled embeddings, two RoPE tables and a sliding layer every second one; Phi-3's fused checkpoint tensors,
which cost nothing once split at load, and RoPE on 3/4 of each head). Per repetition, families in a rotated
order:
- prefill: one 512-token prompt, one token out (its time to first token);
- decode: 8 prompts of 64 tokens, 64 tokens each, greedy; decode tokens/s = 8 x 63 / (last token - first).
Timed on this thread's CPU time (bench.common.CpuClock: what a dedicated machine would show) and the wall
clock; ratios to Llama are medians of per-repetition ratios. The roofline part prices a decode step of 1 and
32 sequences at 4,096 and 32,768 tokens of context each on one H100-SXM (engine/roofline.py); Gemma 3's sliding
layers read their window, its full ones the context (and, for comparison, every layer the context, as priced
before). Writes bench/results/engine_families.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, THREADS_HELP, command, machine_info, write_report  # noqa: E402
from bench.engine_timing import random_prompts, timed_run  # noqa: E402
from engine.batch import StepShape  # noqa: E402
from engine.roofline import MODELS, RooflineStepTime  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "engine_families.json"
FAMILIES = ("llama", "gemma3", "phi3")
PREFILL_LEN, DECODE_BATCH, DECODE_PROMPT, DECODE_LEN = 512, 8, 64, 64
ROOFLINE_MODELS = ("llama-3.1-8b", "phi-3.5-mini", "phi-4-mini", "gemma-3-27b")
ROOFLINE_CONTEXT = 4096
ROOFLINE_CONTEXTS = (ROOFLINE_CONTEXT, 32768)  # the second past Gemma 3's 1,024-token window by far


def _run(runner: TorchModelRunner, prompts: list[list[int]], max_tokens: int) -> dict[str, tuple[float, float]]:
    return timed_run(runner, prompts, max_tokens, 1024, 1024)


def measure(runner: TorchModelRunner, vocab: int, rep: int) -> dict[str, dict[str, float]]:
    prefill = _run(runner, random_prompts(1, PREFILL_LEN, vocab, rep), 1)
    decode = _run(runner, random_prompts(DECODE_BATCH, DECODE_PROMPT, vocab, 100 + rep), DECODE_LEN)
    tokens = DECODE_BATCH * (DECODE_LEN - 1)
    return {clock: {"prefill_s": prefill[clock][1],
                    "decode_tok_s": tokens / (decode[clock][1] - decode[clock][0])} for clock in ("cpu", "wall")}


def decode_step_s(name: str, batch: int, context: int, per_layer: bool = True) -> float:
    """The roofline's H100 decode step of `batch` sequences at `context` tokens each; with `per_layer`, a
    hybrid model's sliding layers read their window (engine/hybrid_attention.py), else every layer the context."""
    hybrid = MODELS[name].hybrid_attention if per_layer else None
    read = hybrid.read_tokens(context, 1) if hybrid is not None else context
    return RooflineStepTime.builtin(name, "H100-SXM").predict(StepShape(0, 0, batch, batch * read, 0))


def roofline_rows() -> list[dict]:
    rows = []
    for name in ROOFLINE_MODELS:
        shape = MODELS[name]
        row = {"model": name, "params_b": shape.num_params / 1e9, "weight_gib": shape.weight_memory_bytes / 2**30,
               "kv_kib_per_token": shape.kv_bytes_per_token / 1024}
        for context in ROOFLINE_CONTEXTS:
            suffix = "" if context == ROOFLINE_CONTEXT else f"_at_{context}"
            for batch in (1, 32):
                row[f"decode_step_ms_batch{batch}{suffix}"] = decode_step_s(name, batch, context) * 1e3
                if shape.hybrid_attention is not None:  # as it was priced before: every layer reading it all
                    row[f"decode_step_ms_batch{batch}{suffix}_all_layers_full"] = (
                        decode_step_s(name, batch, context, per_layer=False) * 1e3)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab = 4096
    with tempfile.TemporaryDirectory() as tmp:
        runners = {family: TorchModelRunner(make_tiny_model(Path(tmp) / family, layers=args.layers, hidden=args.hidden,
                                                            heads=8, kv_heads=4, vocab_size=vocab, family=family),
                                            num_blocks=128, block_size=16, device="cpu")
                   for family in FAMILIES}
        for runner in runners.values():  # warm-up: first calls allocate and pick kernels
            measure(runner, vocab, -1)
        runs: dict[str, list[dict]] = {family: [] for family in FAMILIES}
        for rep in range(args.reps):
            order = FAMILIES[rep % len(FAMILIES):] + FAMILIES[: rep % len(FAMILIES)]
            for family in order:
                runs[family].append(measure(runners[family], vocab, rep))
                print(f"rep {rep} {family}: {runs[family][-1]['cpu']}", flush=True)
        params = {family: runner.config.num_params() for family, runner in runners.items()}
    results = {}
    for family in FAMILIES:
        row: dict = {"params": params[family]}
        for clock in ("cpu", "wall"):
            row[clock] = {key: statistics.median(r[clock][key] for r in runs[family]) for key in ("prefill_s", "decode_tok_s")}
            row[clock]["prefill_vs_llama"] = statistics.median(
                r[clock]["prefill_s"] / base[clock]["prefill_s"] for r, base in zip(runs[family], runs["llama"], strict=True))
            row[clock]["decode_vs_llama"] = statistics.median(
                r[clock]["decode_tok_s"] / base[clock]["decode_tok_s"] for r, base in zip(runs[family], runs["llama"], strict=True))
        row["runs"] = runs[family]
        results[family] = row
    report = {"command": command("bench.engine_families"), "machine": machine_info(),
              "shape": {"layers": args.layers, "hidden": args.hidden, "heads": 8, "kv_heads": 4, "vocab": vocab,
                        "prefill_tokens": PREFILL_LEN, "decode_batch": DECODE_BATCH, "decode_prompt": DECODE_PROMPT,
                        "decode_tokens": DECODE_LEN, "reps": args.reps},
              "clocks": "cpu = this thread's CPU time (a dedicated machine), wall = the shared machine's wall clock",
              "families": results,
              "roofline_h100": {"context_tokens": ROOFLINE_CONTEXT, "contexts": ROOFLINE_CONTEXTS,
                                "models": roofline_rows()}}
    print(write_report(OUT, report))
    for family, row in results.items():
        c = row["cpu"]
        print(f"{family:7} prefill {c['prefill_s'] * 1e3:7.1f} ms ({c['prefill_vs_llama']:.2f}x llama)  "
              f"decode {c['decode_tok_s']:7.1f} tok/s ({c['decode_vs_llama']:.2f}x llama)")
    for r in report["roofline_h100"]["models"]:
        for context in ROOFLINE_CONTEXTS:
            suffix = "" if context == ROOFLINE_CONTEXT else f"_at_{context}"
            full = (f"; every layer reading it all {r[f'decode_step_ms_batch1{suffix}_all_layers_full']:.2f} / "
                    f"{r[f'decode_step_ms_batch32{suffix}_all_layers_full']:.2f} ms"
                    if f"decode_step_ms_batch1{suffix}_all_layers_full" in r else "")
            print(f"{r['model']:14} {r['params_b']:6.2f}B  decode step at {context}: {r[f'decode_step_ms_batch1{suffix}']:.2f} "
                  f"ms (1 seq) / {r[f'decode_step_ms_batch32{suffix}']:.2f} ms (32 seqs){full}")


if __name__ == "__main__":
    main()
