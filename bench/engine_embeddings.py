"""Embeddings on Pitstop's engine (last-token pooling, engine/openai_embeddings.py) against transformers
run as sentence-transformers runs a decoder embedder: padded batches of 32, sorted by length, the last
real token's final hidden state. The engine batches unpadded prompts (2,048 tokens a step) and skips a
cached prefix: here half the inputs are queries that open with the same 48-token instruction, as
Qwen3-Embedding's queries do. Also the engine with its prefix cache off.

A random-weight Qwen3-shaped model (4 layers, hidden 256, 4 heads, 2 KV heads, vocab 4,096, float32) on
this CPU, one torch thread; 256 inputs of 16-512 tokens (log-uniform); texts a second, median of
`--repeats` runs each, alternating; the largest difference between the two's vectors is reported too.
Writes bench/results/engine_embeddings.json.

    .venv/bin/python -m bench.engine_embeddings            # full run (about 2 minutes on 2 cores)
    .venv/bin/python -m bench.engine_embeddings --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import command, machine_info, write_report

RESULTS = Path(__file__).parent / "results"
INSTRUCTION_TOKENS = 48


def make_inputs(count: int, seed: int, vocab: int = 4096) -> list[list[int]]:
    """Half queries (a shared instruction, then the query), half documents; lengths log-uniform 16-512."""
    rng = random.Random(seed)
    instruction = [rng.randrange(3, vocab) for _ in range(INSTRUCTION_TOKENS)]
    inputs = []
    for i in range(count):
        length = int(math.exp(rng.uniform(math.log(16), math.log(512))))
        body = [rng.randrange(3, vocab) for _ in range(length)]
        inputs.append(instruction + body if i % 2 == 0 else body)
    return inputs


def engine_embed(model_dir: Path, inputs: list[list[int]], prefix_caching: bool) -> tuple[float, list[list[float]]]:
    """Seconds to embed all inputs on a fresh engine, and the vectors in input order."""
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from engine.torch_runner import TorchModelRunner

    blocks = sum(-(-len(x) // 16) for x in inputs) + 64
    engine = LLMEngine(EngineConfig(num_blocks=blocks, max_model_len=1024, max_num_seqs=256,
                                    max_num_batched_tokens=2048, long_prefill_token_threshold=2048,
                                    enable_prefix_caching=prefix_caching),
                       TorchModelRunner(model_dir, blocks, 16, device="cpu", dtype=torch.float32))
    params = SamplingParams(max_tokens=1, temperature=0, embed=True)
    vectors: dict[str, list[float]] = {}
    started = time.perf_counter()
    for i, ids in enumerate(inputs):
        engine.add_request(str(i), ids, params)
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished and out.embedding is not None:
                vectors[out.request_id] = out.embedding
    return time.perf_counter() - started, [vectors[str(i)] for i in range(len(inputs))]


def transformers_embed(model: object, inputs: list[list[int]], batch_size: int) -> tuple[float, list[list[float]]]:
    """Seconds for padded batches (sorted by length, right padding), and the vectors in input order."""
    import torch

    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    vectors: dict[int, list[float]] = {}
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(inputs[i]) for i in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(inputs[i])] = torch.tensor(inputs[i])
                mask[row, : len(inputs[i])] = 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # type: ignore[operator]
            last = hidden[torch.arange(len(chunk)), mask.sum(1) - 1]
            for i, vector in zip(chunk, torch.nn.functional.normalize(last, dim=-1).tolist(), strict=True):
                vectors[i] = vector
    return time.perf_counter() - started, [vectors[i] for i in range(len(inputs))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_embeddings.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from transformers import AutoModel

    from engine.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    if args.quick:
        args.inputs, args.repeats = 32, 1
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-embeddings-")
    model_dir = make_tiny_model(Path(tmp.name) / "tiny", layers=4, hidden=256, heads=4, kv_heads=2, vocab_size=4096,
                                max_position_embeddings=2048, family="qwen3")
    reference = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = make_inputs(args.inputs, seed=0)
    times: dict[str, list[float]] = {"transformers_padded": [], "engine": [], "engine_no_prefix_cache": []}
    vectors: dict[str, list[list[float]]] = {}
    for _ in range(args.repeats):
        for name in times:
            if name == "transformers_padded":
                seconds, vectors[name] = transformers_embed(reference, inputs, args.batch_size)
            else:
                seconds, vectors[name] = engine_embed(model_dir, inputs, prefix_caching=name == "engine")
            times[name].append(seconds)
    tokens = sum(len(x) for x in inputs)
    rows = {name: {"median_s": round(statistics.median(t), 4), "texts_per_s": round(len(inputs) / statistics.median(t), 1),
                   "tokens_per_s": round(tokens / statistics.median(t))} for name, t in times.items()}
    base = rows["transformers_padded"]["median_s"]
    for row in rows.values():
        row["speedup_over_transformers"] = round(base / row["median_s"], 3)
    differences = {name: max(abs(a - b) for va, vb in zip(vectors[name], vectors["transformers_padded"], strict=True)
                             for a, b in zip(va, vb, strict=True)) for name in ("engine", "engine_no_prefix_cache")}
    padded = sum(max(len(inputs[i]) for i in chunk) * len(chunk) for chunk in _batches(inputs, args.batch_size))
    for name, row in rows.items():
        print(f"{name:24s} {row['median_s']:.3f} s, {row['texts_per_s']} texts/s ({row['speedup_over_transformers']}x)")
    report = {"command": command("bench.engine_embeddings", argv), "machine": machine_info(),
              "model": "random Qwen3-shaped: 4 layers, hidden 256, 4 heads, 2 KV heads, vocab 4096, float32",
              "inputs": {"count": len(inputs), "tokens": tokens, "padded_tokens_transformers": padded,
                         "shared_instruction_tokens": INSTRUCTION_TOKENS, "queries_with_instruction": len(inputs[::2])},
              "repeats": args.repeats, "batch_size": args.batch_size, "rows": rows,
              "max_abs_difference_from_transformers": {k: float(f"{v:.3g}") for k, v in differences.items()}}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


def _batches(inputs: list[list[int]], size: int) -> list[list[int]]:
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    return [order[s : s + size] for s in range(0, len(order), size)]


if __name__ == "__main__":
    main()
