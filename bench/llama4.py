"""What Llama 4's chunked local attention saves in Pitstop's engine on CPU: one tiny Llama 4 checkpoint run twice, side
by side in one process, with its RoPE layers (3 of 4) attending within 256-token chunks (their KV kept one chunk back
and released behind it, engine/model/llama4_config.py) and with `attention_chunk_size` null (every layer global over
the whole context, as a model without iRoPE's chunks would), everything else equal.

    .venv/bin/python -m bench.llama4 [--layers 4] [--hidden 512] [--reps 3] [--threads N]

Per repetition, both in a rotated order, at each context (256 and 2,048 prompt tokens): 8 sequences, 32 tokens each,
greedy, all 8 prompts prefilled in one step; decode tokens/s = 8 x 31 / (last token - first). Timed on this thread's CPU time (bench.common.CpuClock) and
the wall clock; ratios (chunked / global) are medians of per-repetition ratios. Writes bench/results/llama4.json.
(What the chunked layers' KV release saves is the KV groups' own: tests/engine/test_kv_groups.py.)"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, THREADS_HELP, command, machine_info, write_report  # noqa: E402
from bench.engine_timing import random_prompts, timed_run  # noqa: E402
from engine.tiny_llama4 import hf_llama4  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "llama4.json"
VARIANTS = ("chunked", "global")
DECODE_BATCH, DECODE_LEN, CHUNK = 8, 32, 256
CONTEXTS = (256, 2048)
VOCAB = 4096


def _save(out: Path, layers: int, hidden: int) -> Path:
    hf_llama4(0, vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden, intermediate_size_mlp=2 * hidden,
              num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4, head_dim=hidden // 8,
              max_position_embeddings=4096, attention_chunk_size=CHUNK, floor_scale=8192,
              attn_scale=0.1).save_pretrained(out)  # fmt: skip
    return out


def _global_copy(model_dir: Path, out: Path) -> Path:
    """The same weights (linked), `attention_chunk_size` and `layer_types` null: every layer global."""
    out.mkdir()
    for path in model_dir.iterdir():
        (out / path.name).symlink_to(path)
    (out / "config.json").unlink()
    raw = json.loads((model_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**raw, "attention_chunk_size": None, "layer_types": None}))
    return out


def _run(runner: TorchModelRunner, prompts: list[list[int]], max_tokens: int) -> dict[str, tuple[float, float]]:
    return timed_run(runner, prompts, max_tokens, 4096, DECODE_BATCH * max(CONTEXTS))


def measure(runner: TorchModelRunner, rep: int) -> dict[str, dict[str, float]]:
    row: dict[str, dict[str, float]] = {"cpu": {}, "wall": {}}
    for context in CONTEXTS:
        decode = _run(runner, random_prompts(DECODE_BATCH, context, VOCAB, 100 + rep, first_id=1), DECODE_LEN)
        for clock in ("cpu", "wall"):
            first, last = decode[clock]
            row[clock][f"decode_tok_s_at_{context}"] = DECODE_BATCH * (DECODE_LEN - 1) / (last - first)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        chunked = _save(Path(tmp) / "chunked", args.layers, args.hidden)
        dirs = {"chunked": chunked, "global": _global_copy(chunked, Path(tmp) / "global")}
        runners = {name: TorchModelRunner(path, num_blocks=3000, block_size=16, device="cpu") for name, path in dirs.items()}
        assert runners["chunked"].config.attention_chunk == CHUNK and runners["global"].config.sliding_layers == ()
        for runner in runners.values():  # warm-up: first calls allocate and pick kernels
            _run(runner, random_prompts(2, 64, VOCAB, -1, first_id=1), 4)
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for rep in range(args.reps):
            for name in VARIANTS[rep % 2:] + VARIANTS[: rep % 2]:
                runs[name].append(measure(runners[name], rep))
                print(f"rep {rep} {name}: {runs[name][-1]['cpu']}", flush=True)
    keys = [f"decode_tok_s_at_{c}" for c in CONTEXTS]
    results: dict = {name: {clock: {k: statistics.median(r[clock][k] for r in runs[name]) for k in keys}
                            for clock in ("cpu", "wall")} | {"runs": runs[name]}
                     for name in VARIANTS}
    ratios = {clock: {f"{k}_chunked_vs_global": statistics.median(
        c[clock][k] / g[clock][k] for c, g in zip(runs["chunked"], runs["global"], strict=True)) for k in keys}
        for clock in ("cpu", "wall")}
    report = {"command": command("bench.llama4"), "machine": machine_info(),
              "shape": {"layers": args.layers, "hidden": args.hidden, "heads": 8, "kv_heads": 4, "vocab": VOCAB,
                        "experts": 4, "attention_chunk_size": CHUNK, "decode_batch": DECODE_BATCH,
                        "decode_tokens": DECODE_LEN, "decode_contexts": CONTEXTS, "reps": args.reps,
                        "threads": args.threads},
              "clocks": "cpu = this thread's CPU time (a dedicated machine), wall = the shared machine's wall clock",
              "variants": results, "ratios": ratios}
    print(write_report(OUT, report))
    for name in VARIANTS:
        c = results[name]["cpu"]
        print(f"{name:8} " + "  ".join(f"decode@{ctx} {c[f'decode_tok_s_at_{ctx}']:6.1f} tok/s" for ctx in CONTEXTS))
    print("chunked / global (cpu):", {k: round(v, 3) for k, v in ratios["cpu"].items()})


if __name__ == "__main__":
    main()
