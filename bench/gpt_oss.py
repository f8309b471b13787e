"""gpt-oss against Llama of the same size in Pitstop's engine on CPU, side by side in one run, and the roofline's
predicted H100 decode step for gpt-oss-20b.

    .venv/bin/python -m bench.gpt_oss [--layers 4] [--hidden 512] [--reps 3] [--threads 1]

Both are random checkpoints of one shape (layers, hidden, 8 heads of 64, 4 KV heads, vocabulary 4,096): a Llama
from make_tiny_model (its dense MLP ~8/3 x hidden wide), and a gpt-oss saved by transformers (GptOssForCausalLM:
8 experts as wide as hidden, 2 a token, so about the Llama's active MLP width; attention sinks, biases, every
second layer a 128-token window, YaRN). Per repetition, in alternating order, bench.engine_families' two runs:
- prefill: one 512-token prompt, one token out;
- decode: 8 prompts of 64 tokens, 64 tokens each, greedy; tokens/s = 8 x 63 / (last token - first).
Timed on this thread's CPU time (bench.common.CpuClock) and the wall clock; ratios to Llama are medians of
per-repetition ratios. The roofline part prices gpt-oss-20b's decode step (1 and 32 sequences, 4,096 and 32,768
tokens of context each) on one H100-SXM with its experts in bf16 (as --dequantize-mxfp4 serves it)
(engine/roofline.py: 3.6B active parameters, experts read as routed; the 12 sliding layers read 128 tokens).

MXFP4 (bench/gpt_oss_mxfp4.py): the gpt-oss checkpoint's experts packed to MXFP4, served packed
(`mxfp4_packed`, the default for such a checkpoint) and dequantized at load (`mxfp4_dequantized`,
--dequantize-mxfp4), both timed in the same alternating repetitions as the others; each one's expert and
parameter bytes and resident memory after loading in a fresh process; and the roofline's gpt-oss-20b and -120b
on one H100-SXM with MXFP4 experts (4.25 bits a weight) and with bf16 ones: weight GiB, whether they fit with
room for KV, the decode step at 1 and 32 sequences of 4,096 tokens.
Writes bench/results/gpt_oss.json."""

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
from bench.engine_families import measure  # noqa: E402
from bench.gpt_oss_mxfp4 import load_footprint, mxfp4_copy  # noqa: E402
from bench.gpt_oss_mxfp4 import roofline_rows as mxfp4_roofline_rows  # noqa: E402
from engine.batch import StepShape  # noqa: E402
from engine.roofline import GPUS, ModelShape, RooflineStepTime  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "gpt_oss.json"
VOCAB = 4096
CONTEXTS = (4096, 32768)
# openai/gpt-oss-20b's config.json (the fields the roofline reads).
GPT_OSS_20B = {"model_type": "gpt_oss", "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
               "num_hidden_layers": 24, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
               "num_local_experts": 32, "num_experts_per_tok": 4, "sliding_window": 128,
               "layer_types": ["sliding_attention", "full_attention"] * 12, "tie_word_embeddings": False}


def gpt_oss_dir(out: Path, layers: int, hidden: int) -> Path:
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    config = GptOssConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_local_experts=8,
                          num_experts_per_tok=2, sliding_window=128, max_position_embeddings=2048)
    GptOssForCausalLM(config).save_pretrained(out)
    return out


def roofline_rows() -> dict:
    shape = ModelShape.from_hf_config(GPT_OSS_20B, "gpt-oss-20b")
    roofline = RooflineStepTime(shape, GPUS["H100-SXM"])
    hybrid = shape.hybrid_attention
    assert hybrid is not None
    row: dict = {"params_b": shape.num_params / 1e9,
                 "active_params_b": (shape.active_layer_params + shape.lm_head_params) / 1e9,
                 "weight_gib": shape.weight_memory_bytes / 2**30, "kv_kib_per_token": shape.kv_bytes_per_token / 1024}
    for context in CONTEXTS:
        for batch in (1, 32):
            read = hybrid.read_tokens(context, 1)
            row[f"decode_step_ms_batch{batch}_at_{context}"] = roofline.predict(
                StepShape(0, 0, batch, batch * read, 0)) * 1e3
            row[f"decode_step_ms_batch{batch}_at_{context}_all_layers_full"] = roofline.predict(
                StepShape(0, 0, batch, batch * context, 0)) * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = ("llama", "gpt_oss", "mxfp4_packed", "mxfp4_dequantized")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"llama": make_tiny_model(Path(tmp) / "llama", layers=args.layers, hidden=args.hidden, heads=8,
                                         kv_heads=4, vocab_size=VOCAB),
                "gpt_oss": gpt_oss_dir(Path(tmp) / "gpt_oss", args.layers, args.hidden)}
        dirs["mxfp4_packed"] = dirs["mxfp4_dequantized"] = mxfp4_copy(dirs["gpt_oss"], Path(tmp) / "mxfp4")
        footprint = {name: load_footprint(dirs[name], name == "mxfp4_dequantized", torch.float32, args.threads)
                     for name in ("mxfp4_packed", "mxfp4_dequantized")}
        runners = {name: TorchModelRunner(dirs[name], num_blocks=128, block_size=16, device="cpu", dtype=torch.float32,
                                          dequantize_mxfp4=name == "mxfp4_dequantized")
                   for name in models}
        for runner in runners.values():  # warm-up: first calls allocate and pick kernels
            measure(runner, VOCAB, -1)
        runs: dict[str, list[dict]] = {name: [] for name in models}
        for rep in range(args.reps):
            for name in (models if rep % 2 == 0 else models[::-1]):
                runs[name].append(measure(runners[name], VOCAB, rep))
                print(f"rep {rep} {name}: {runs[name][-1]['cpu']}", flush=True)
        params = {name: runner.config.num_params() for name, runner in runners.items()}
        config = runners["gpt_oss"].config
        active = {"llama": params["llama"],
                  "gpt_oss": params["gpt_oss"] - args.layers * (config.num_experts - config.num_experts_per_tok)
                  * 3 * args.hidden * config.moe_intermediate_size}
        active["mxfp4_packed"] = active["mxfp4_dequantized"] = active["gpt_oss"]
        params["mxfp4_packed"] = params["mxfp4_dequantized"] = params["gpt_oss"]
    results = {}
    for name in models:
        row: dict = {"params": params[name], "active_params": active[name]}
        for clock in ("cpu", "wall"):
            row[clock] = {key: statistics.median(r[clock][key] for r in runs[name]) for key in ("prefill_s", "decode_tok_s")}
            row[clock]["prefill_vs_llama"] = statistics.median(
                r[clock]["prefill_s"] / base[clock]["prefill_s"] for r, base in zip(runs[name], runs["llama"], strict=True))
            row[clock]["decode_vs_llama"] = statistics.median(
                r[clock]["decode_tok_s"] / base[clock]["decode_tok_s"] for r, base in zip(runs[name], runs["llama"], strict=True))
        row["runs"] = runs[name]
        results[name] = row
    packed, dequantized = footprint["mxfp4_packed"], footprint["mxfp4_dequantized"]
    mxfp4 = {"dtype": "float32", "packed": packed, "dequantized": dequantized,
             "expert_bytes_packed_vs_dequantized": packed["expert_weight_bytes"] / dequantized["expert_weight_bytes"],
             "expert_bytes_packed_vs_bf16": packed["expert_weight_bytes"] / (dequantized["expert_weight_bytes"] / 2),
             "rss_packed_vs_dequantized": packed["rss_after_load_bytes"] / dequantized["rss_after_load_bytes"],
             **{f"{clock}_decode_packed_vs_dequantized": statistics.median(
                 p[clock]["decode_tok_s"] / d[clock]["decode_tok_s"]
                 for p, d in zip(runs["mxfp4_packed"], runs["mxfp4_dequantized"], strict=True)) for clock in ("cpu", "wall")},
             "roofline_h100": mxfp4_roofline_rows()}
    report = {"command": command("bench.gpt_oss"), "machine": machine_info(),
              "shape": {"layers": args.layers, "hidden": args.hidden, "heads": 8, "kv_heads": 4, "vocab": VOCAB,
                        "experts": 8, "experts_per_token": 2, "window": 128, "dtype": "float32", "reps": args.reps},
              "clocks": "cpu = this thread's CPU time (a dedicated machine), wall = the shared machine's wall clock",
              "models": results, "roofline_h100_gpt_oss_20b": roofline_rows(), "mxfp4": mxfp4}
    print(write_report(OUT, report))
    for name, row in results.items():
        c = row["cpu"]
        print(f"{name:8} prefill {c['prefill_s'] * 1e3:7.1f} ms ({c['prefill_vs_llama']:.2f}x llama)  "
              f"decode {c['decode_tok_s']:7.1f} tok/s ({c['decode_vs_llama']:.2f}x llama)")
    r = report["roofline_h100_gpt_oss_20b"]
    print(f"gpt-oss-20b {r['params_b']:.2f}B ({r['active_params_b']:.2f}B active): " + ", ".join(
        f"{r[f'decode_step_ms_batch{b}_at_{c}']:.2f} ms (batch {b}, {c} ctx)" for c in CONTEXTS for b in (1, 32)))
    print(f"MXFP4 experts packed: {mxfp4['expert_bytes_packed_vs_dequantized']:.3f}x the float32 bytes "
          f"({mxfp4['expert_bytes_packed_vs_bf16']:.3f}x bf16), RSS after load {mxfp4['rss_packed_vs_dequantized']:.2f}x, "
          f"decode {mxfp4['cpu_decode_packed_vs_dequantized']:.2f}x tok/s of dequantized-at-load")
    for name, row in mxfp4["roofline_h100"].items():
        print(f"{name}: {row['weight_gib']:.1f} GiB, fits one H100: {row['fits_one_h100']}, decode "
              f"{row['decode_step_ms_batch1_at_4096']:.2f} / {row['decode_step_ms_batch32_at_4096']:.2f} ms (1 / 32 seqs)")


if __name__ == "__main__":
    main()
