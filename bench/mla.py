"""Multi-head latent attention (engine/model/mla.py): what the latent KV cache saves, and what each attention form
costs a decode step on a CPU.

- kv: bytes a token takes in the cache (all layers) and how many requests of a given context fit a fixed KV
  budget, the latent layout the engine keeps (TorchModelRunner.kv_bytes_per_block on the parsed config) against
  the same model's decompressed MHA layout (every head's keys, qk_nope + qk_rope dims, and values), computed from
  DeepSeek-V3's and DeepSeek-V2-Lite's config.json;
- decode: one layer's attention for single-query rows over gathered latents, in V2-Lite's shape (16 heads, a
  512 + 64 latent, 128 + 64 query/key dims, 128 value dims), absorbed (W_UK folded into the queries, attention
  over the latents, W_UV after) against decompressed (kv_b_proj expands every context token's latent into keys
  and values, then attention), and, for reference, plain attention over an already-expanded MHA cache of the
  same context; thread CPU time (one torch thread), forms interleaved, the median of repeats;
- prefill_rows: the same layer's two forms for a prefill row of n queries after a cached context (a decode
  checking drafts, a chunk of a long prompt), around the row length below which the engine absorbs
  (MLAttention.absorb_below: 85 for this shape, half the FLOPs' break-even).

Writes bench/results/mla.json.

    .venv/bin/python -m bench.mla            # about a minute on 2 cores
    .venv/bin/python -m bench.mla --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import RESULTS, THREADS_HELP, command, machine_info, write_report
from engine.model.config import ModelConfig
from engine.model.mla import MLAttention
from engine.torch_runner import TorchModelRunner

# The config.json fields that matter.
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "n_group": 8,
    "topk_group": 4, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "norm_topk_prob": True,
    "max_position_embeddings": 163840, "torch_dtype": "bfloat16",
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
}  # fmt: skip
DEEPSEEK_V2_LITE = {
    "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
    "n_shared_experts": 2, "n_routed_experts": 64, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
    "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "topk_method": "greedy", "max_position_embeddings": 163840, "torch_dtype": "bfloat16",
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
}  # fmt: skip
BUDGET_BYTES = 64 << 30  # a KV budget (bf16), all layers
REQUEST_TOKENS = 8192


def kv_sizes(raw: dict) -> dict:
    config = ModelConfig.from_dict(raw)
    latent = TorchModelRunner.kv_bytes_per_block(config, 1, torch.bfloat16)  # the engine's own sizing
    expanded_values = config.num_heads * (config.qk_nope_head_dim + config.head_dim + config.v_head_dim)
    expanded = config.num_layers * expanded_values * torch.bfloat16.itemsize
    per_request = REQUEST_TOKENS
    return {"latent_values_per_token_per_layer": config.kv_cache_entry[2],
            "mha_values_per_token_per_layer": expanded_values,
            "latent_bytes_per_token": latent, "mha_bytes_per_token": expanded, "mha_over_latent": expanded / latent,
            f"requests_of_{REQUEST_TOKENS}_tokens_in_{BUDGET_BYTES >> 30}_GiB": {
                "latent": BUDGET_BYTES // (latent * per_request), "mha": BUDGET_BYTES // (expanded * per_request)}}


def attention_layer() -> MLAttention:
    torch.manual_seed(0)
    config = ModelConfig.from_dict({**DEEPSEEK_V2_LITE, "num_hidden_layers": 1, "n_routed_experts": 0})
    layer = MLAttention(config)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0.0, param.shape[-1] ** -0.5)
    return layer.eval()


def decode_times(layer: MLAttention, batch: int, context: int, repeats: int) -> dict:
    heads, rank, rope, nope, v = layer.num_heads, layer.rank, layer.rope_dim, layer.nope_dim, layer.v_dim
    q_nope, q_rot = torch.randn(batch, heads, nope), torch.randn(batch, heads, rope)
    latents = torch.randn(batch, 1, context, rank + rope)
    mask = torch.ones(batch, 1, 1, context, dtype=torch.bool)
    keys, values = torch.randn(batch, heads, context, nope + rope), torch.randn(batch, heads, context, v)
    query = torch.randn(batch, heads, 1, nope + rope)
    forms = {
        "absorbed": lambda: layer.absorbed_decode(q_nope, q_rot, latents, mask),
        "decompressed": lambda: layer.decompressed_decode(q_nope, q_rot, latents, mask),
        "mha_cache_reference": lambda: F.scaled_dot_product_attention(query, keys, values, attn_mask=mask,
                                                                      scale=layer.softmax_scale),
    }
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.inference_mode():
        for form in forms.values():  # warm-up
            form()
        for _ in range(repeats):
            for name, form in forms.items():
                start = time.thread_time()
                form()
                times[name].append((time.thread_time() - start) / batch)
    medians = {f"{name}_ms_per_token": statistics.median(t) * 1e3 for name, t in times.items()}
    return {"batch": batch, "context_tokens": context, **medians,
            "decompressed_over_absorbed": medians["decompressed_ms_per_token"] / medians["absorbed_ms_per_token"]}


def prefill_row_times(layer: MLAttention, rows: int, context: int, repeats: int) -> dict:
    q_nope, q_rot = torch.randn(rows, layer.num_heads, layer.nope_dim), torch.randn(rows, layer.num_heads, layer.rope_dim)
    latents = torch.randn(context, layer.rank + layer.rope_dim)
    mask = torch.arange(context)[None, :] <= torch.arange(context - rows, context)[:, None]
    forms = {"absorbed": layer.absorbed_prefill, "decompressed": layer.decompressed_prefill}
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, form in forms.items():
                start = time.thread_time()
                form(q_nope, q_rot, latents, mask)
                times[name].append(time.thread_time() - start)
    medians = {f"{name}_ms": statistics.median(t) * 1e3 for name, t in times.items()}
    return {"query_rows": rows, "context_tokens": context, **medians,
            "decompressed_over_absorbed": medians["decompressed_ms"] / medians["absorbed_ms"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "mla.json")
    args = parser.parse_args(argv)
    shapes = [(1, 512), (1, 2048), (8, 512), (8, 2048)]
    rows, row_context = [4, 32, 64, 128, 512], 2048
    if args.quick:
        args.repeats, shapes, rows, row_context = 2, [(1, 128), (4, 128)], [4, 64], 128
    torch.set_num_threads(args.threads)
    kv = {"deepseek_v3": kv_sizes(DEEPSEEK_V3), "deepseek_v2_lite": kv_sizes(DEEPSEEK_V2_LITE)}
    print(kv, flush=True)
    layer = attention_layer()
    decode = []
    for batch, context in shapes:
        decode.append(decode_times(layer, batch, context, args.repeats))
        print(decode[-1], flush=True)
    prefill_rows = []
    for n in rows:
        prefill_rows.append(prefill_row_times(layer, n, row_context, max(1, args.repeats // 2)))
        print(prefill_rows[-1], flush=True)
    report = {"command": command("bench.mla", argv), "machine": machine_info(),
              "setup": {"kv_budget_bytes": BUDGET_BYTES, "kv_dtype": "bfloat16", "request_tokens": REQUEST_TOKENS,
                        "decode_layer": "one MLA layer in DeepSeek-V2-Lite's shape, float32, random weights",
                        "threads": args.threads, "repeats": args.repeats, "absorb_below": layer.absorb_below},
              "kv": kv, "decode": decode, "prefill_rows": prefill_rows}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
