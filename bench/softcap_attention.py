"""What Gemma 2's attention-logit soft-capping costs in Pitstop's engine on CPU: one Gemma 2 checkpoint run twice,
side by side in one process, with `attn_logit_softcapping` 50 (its real value: scores capped, so attention runs as
explicit matmuls and a float32 softmax, engine/model/attention.py) and with it off (torch SDPA), everything else equal.

    .venv/bin/python -m bench.softcap_attention [--layers 4] [--hidden 512] [--reps 3] [--threads N]

Per repetition, both in a rotated order:
- prefill: one 512-token prompt, one token out;
- decode at each context (128 and 1,024 prompt tokens): 8 sequences, 32 tokens each, greedy;
  decode tokens/s = 8 x 31 / (last token - first).
Timed on this thread's CPU time (bench.common.CpuClock) and the wall clock; the ratios (capped / uncapped) are
medians of per-repetition ratios. Every second layer slides over 4,096 tokens (wider than these contexts: every
layer reads the whole context). Writes bench/results/softcap_attention.json."""

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
from engine.tiny_moe import spread_weights  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "softcap_attention.json"
VARIANTS = ("capped", "uncapped")
PREFILL_LEN, DECODE_BATCH, DECODE_LEN = 512, 8, 32
CONTEXTS = (128, 1024)
VOCAB = 4096


def _save_gemma2(out: Path, layers: int, hidden: int) -> Path:
    import transformers as hf

    torch.manual_seed(0)
    config = hf.Gemma2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                             head_dim=hidden // 8, max_position_embeddings=2048, attn_logit_softcapping=50.0)
    spread_weights(hf.Gemma2ForCausalLM(config), embed_std=0.1).save_pretrained(out)
    return out


def _uncapped_copy(model_dir: Path, out: Path) -> Path:
    """The same weights (linked), `attn_logit_softcapping` null."""
    out.mkdir()
    for path in model_dir.iterdir():
        (out / path.name).symlink_to(path)
    (out / "config.json").unlink()
    raw = json.loads((model_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**raw, "attn_logit_softcapping": None}))
    return out


def _run(runner: TorchModelRunner, prompts: list[list[int]], max_tokens: int) -> dict[str, tuple[float, float]]:
    return timed_run(runner, prompts, max_tokens, 2048, 2048)


def measure(runner: TorchModelRunner, rep: int) -> dict[str, dict[str, float]]:
    prefill = _run(runner, random_prompts(1, PREFILL_LEN, VOCAB, rep, first_id=1), 1)
    row: dict[str, dict[str, float]] = {clock: {"prefill_s": prefill[clock][1]} for clock in ("cpu", "wall")}
    for context in CONTEXTS:
        decode = _run(runner, random_prompts(DECODE_BATCH, context, VOCAB, 100 + rep, first_id=1), DECODE_LEN)
        for clock in ("cpu", "wall"):
            row[clock][f"decode_tok_s_at_{context}"] = DECODE_BATCH * (DECODE_LEN - 1) / (decode[clock][1] - decode[clock][0])
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
        capped = _save_gemma2(Path(tmp) / "capped", args.layers, args.hidden)
        dirs = {"capped": capped, "uncapped": _uncapped_copy(capped, Path(tmp) / "uncapped")}
        runners = {name: TorchModelRunner(path, num_blocks=640, block_size=16, device="cpu") for name, path in dirs.items()}
        assert runners["capped"].config.attn_logit_softcapping == 50.0
        assert runners["uncapped"].config.attn_logit_softcapping is None
        for runner in runners.values():  # warm-up: first calls allocate and pick kernels
            _run(runner, random_prompts(2, 64, VOCAB, -1, first_id=1), 4)
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for rep in range(args.reps):
            for name in VARIANTS[rep % 2:] + VARIANTS[: rep % 2]:
                runs[name].append(measure(runners[name], rep))
                print(f"rep {rep} {name}: {runs[name][-1]['cpu']}", flush=True)
    keys = ["prefill_s", *(f"decode_tok_s_at_{c}" for c in CONTEXTS)]
    results: dict = {name: {clock: {k: statistics.median(r[clock][k] for r in runs[name]) for k in keys}
                            for clock in ("cpu", "wall")} | {"runs": runs[name]} for name in VARIANTS}
    ratios = {clock: {f"{k}_capped_vs_uncapped": statistics.median(
        c[clock][k] / u[clock][k] for c, u in zip(runs["capped"], runs["uncapped"], strict=True)) for k in keys}
        for clock in ("cpu", "wall")}
    report = {"command": command("bench.softcap_attention"), "machine": machine_info(),
              "shape": {"layers": args.layers, "hidden": args.hidden, "heads": 8, "kv_heads": 4, "vocab": VOCAB,
                        "prefill_tokens": PREFILL_LEN, "decode_batch": DECODE_BATCH, "decode_tokens": DECODE_LEN,
                        "decode_contexts": CONTEXTS, "reps": args.reps, "threads": args.threads},
              "clocks": "cpu = this thread's CPU time (a dedicated machine), wall = the shared machine's wall clock",
              "variants": results, "ratios": ratios}
    print(write_report(OUT, report))
    for name in VARIANTS:
        c = results[name]["cpu"]
        print(f"{name:9} prefill {c['prefill_s'] * 1e3:7.1f} ms  " + "  ".join(
            f"decode@{ctx} {c[f'decode_tok_s_at_{ctx}']:6.1f} tok/s" for ctx in CONTEXTS))
    print("capped / uncapped (cpu):", {k: round(v, 3) for k, v in ratios["cpu"].items()})


if __name__ == "__main__":
    main()
