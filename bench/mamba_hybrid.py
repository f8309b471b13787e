"""A Mamba-2 hybrid against an attention-only model of the same size in Pitstop's engine on CPU, side by side in
one run: decode cost per token as the context grows, and what a sequence keeps (state vs KV bytes).

    .venv/bin/python -m bench.mamba_hybrid [--contexts 256 1024 4096] [--batch 4] [--steps 16] [--reps 3]

Both are random-weight models transformers builds and saves (hidden 256, 8 layers, the same 4-head/2-KV-head
attention and 512-wide MLP, vocabulary 1,000): Bamba with attention in 1 layer of 8 (the other 7 Mamba-2 mixers,
8 heads of 64, d_state 64), and Llama with attention in all 8. Per context length and repetition (models in a
rotated order), `--batch` sequences are prefilled to that length (untimed), then `--steps` batched decode steps
are timed on this thread's CPU time (bench.common.CpuClock: what a dedicated machine would show) and the wall
clock; per-token cost = step time / batch; the ratio is the median of per-repetition ratios. Bytes: one
sequence's KV (attention layers x 2 x KV heads x head_dim x context, float32 here) against the hybrid's fixed
state slot (conv + SSM over its mixers), for these models and for the Hub's Granite 4.0-H-Tiny and Bamba-9B
in bf16 (parsed by the engine's own ModelConfig). Writes bench/results/mamba_hybrid.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, CpuClock, command, machine_info, write_report  # noqa: E402
from engine.batch import ScheduledBatch  # noqa: E402
from engine.model.config import ModelConfig  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.sequence import Sequence  # noqa: E402
from engine.torch_runner import TorchModelRunner  # noqa: E402

OUT = RESULTS / "mamba_hybrid.json"
BLOCK = 16
SHAPE = {"vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 8,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192}  # fmt: skip
MAMBA = {"mamba_n_heads": 8, "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 64, "mamba_chunk_size": 128}
# The fields that size a sequence's KV and state in two Hub configs (tests/engine/mamba_checkpoints.py has them).
HUB = {
    "granite-4.0-h-tiny": {"model_type": "granitemoehybrid", "vocab_size": 100352, "hidden_size": 1536,
                           "intermediate_size": 512, "shared_intermediate_size": 1024, "num_hidden_layers": 40,
                           "num_attention_heads": 12, "num_key_value_heads": 4, "num_local_experts": 64,
                           "num_experts_per_tok": 6, "position_embedding_type": "nope",
                           "layer_types": ["mamba"] * 5 + ["attention"] + (["mamba"] * 9 + ["attention"]) * 3
                           + ["mamba"] * 4, "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_d_state": 128},
    "bamba-9b": {"model_type": "bamba", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "attn_layer_indices": [9, 18, 27], "mamba_n_heads": 128, "mamba_d_head": 64, "mamba_d_state": 128},
}


def _save_models(root: Path) -> dict[str, Path]:
    import transformers as hf

    torch.manual_seed(0)
    models = {"hybrid": hf.BambaForCausalLM(hf.BambaConfig(**SHAPE, **MAMBA, attn_layer_indices=[4])),
              "attention": hf.LlamaForCausalLM(hf.LlamaConfig(**SHAPE))}
    for name, model in models.items():
        model.save_pretrained(root / name)
    return {name: root / name for name in models}


def _decode_cost(runner: TorchModelRunner, context: int, batch_size: int, steps: int) -> tuple[float, float]:
    """(CPU, wall) seconds per decoded token at `context` tokens, `batch_size` sequences decoding together."""
    blocks_each = -(-(context + steps + 1) // BLOCK)
    seqs = []
    for i in range(batch_size):
        seq = Sequence(f"s{i}", [(7 * i + j) % 997 + 1 for j in range(context)], SamplingParams(temperature=0.0), 0.0)
        seq.block_tables = [list(range(1 + i * blocks_each, 1 + (i + 1) * blocks_each))]
        seqs.append(seq)
    for seq in seqs:  # prefill, 512 tokens a step
        while seq.num_computed_tokens < seq.num_prompt_tokens:
            batch = ScheduledBatch()
            n = min(512, seq.num_tokens - seq.num_computed_tokens)
            batch.add(seq, n)
            tokens = runner.execute(batch)
            seq.num_computed_tokens += n
            seq.token_ids.extend(tokens)
    clock = CpuClock()
    cpu, wall = clock.now(), time.perf_counter()
    for _ in range(steps):
        batch = ScheduledBatch()
        for seq in seqs:
            batch.add(seq, 1)
        for seq, token in zip(seqs, runner.execute(batch), strict=True):
            seq.num_computed_tokens += 1
            seq.token_ids.append(token)
    tokens = steps * batch_size
    return (clock.now() - cpu) / tokens, (time.perf_counter() - wall) / tokens


def _bytes_per_sequence(config: ModelConfig, context: int, element: int) -> dict[str, int]:
    kv = TorchModelRunner.kv_bytes_per_block(config, BLOCK, torch.float32) // 4 * element // BLOCK * context
    state = config.hybrid.state_bytes(element) if config.hybrid else 0
    all_attention = kv * config.num_layers // max(config.num_kv_layers, 1)
    return {"context": context, "kv_bytes": kv, "state_bytes": state, "total_bytes": kv + state,
            "all_attention_kv_bytes": all_attention}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folders = _save_models(Path(tmp))
        blocks = args.batch * (-(-(max(args.contexts) + args.steps + 1) // BLOCK)) + 1
        runners = {name: TorchModelRunner(folder, blocks, BLOCK, device="cpu", num_state_slots=args.batch)
                   for name, folder in folders.items()}
        configs = {name: ModelConfig.from_dir(folder) for name, folder in folders.items()}
        decode = []
        for context in args.contexts:
            costs: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
            for rep in range(args.reps):
                order = list(runners) if rep % 2 == 0 else list(reversed(runners))
                for name in order:
                    costs[name].append(_decode_cost(runners[name], context, args.batch, args.steps))
            row: dict = {"context": context}
            for name, values in costs.items():
                row[f"{name}_ms_per_token_cpu"] = 1e3 * statistics.median(v[0] for v in values)
                row[f"{name}_ms_per_token_wall"] = 1e3 * statistics.median(v[1] for v in values)
            row["hybrid_over_attention_cpu"] = statistics.median(
                h[0] / a[0] for h, a in zip(costs["hybrid"], costs["attention"], strict=True))
            decode.append(row)
            print(row)
    contexts = (4096, 32768, 131072)
    memory = {name: [_bytes_per_sequence(config, c, 4) for c in contexts] for name, config in configs.items()}
    hub = {name: [_bytes_per_sequence(ModelConfig.from_dict(raw), c, 2) for c in contexts] for name, raw in HUB.items()}
    report = {"command": command("bench.mamba_hybrid", argv), "machine": machine_info(),
              "note": "a shared, loaded 2-core AMD EPYC VM: read the ratios, measured side by side, over the times",
              "settings": vars(args) | {"shape": SHAPE, "mamba": MAMBA, "hybrid_attention_layers": [4],
                                        "torch_threads": 1},
              "decode": decode, "bytes_per_sequence_float32": memory, "bytes_per_sequence_hub_bf16": hub}
    write_report(OUT, report)
    print(f"wrote {OUT}")
    return report


if __name__ == "__main__":
    main()
