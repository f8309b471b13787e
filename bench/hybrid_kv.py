"""KV groups for models mixing sliding-window and full layers (engine/kv_groups.py) against the old layout that
keeps every block of every layer, at the same KV bytes, on small random CPU models saved by transformers:
a gpt-oss-like one (4 layers: sliding, full, sliding, full) and a Gemma-3-like one (6 layers: five sliding,
then a full one), each window 32 tokens, blocks of 8, prefill chunks of 64.

- capacity: 12 long requests (448-token prompts, 64 tokens out) at once into a cache the old layout fills with
  2 of them: the most decoding at once, the pool blocks and KV bytes a request holds at its peak, preemptions;
- decode: 8 requests decoding at about 500 tokens of context in a cache that holds them all either way, old and
  new engines stepped in turn, the median step's thread CPU time per token (one torch thread), so the layouts'
  per-step costs (a block table and a plan a group) side by side.

Writes bench/results/hybrid_kv.json.

    .venv/bin/python -m bench.hybrid_kv            # about a minute on 2 cores
    .venv/bin/python -m bench.hybrid_kv --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, THREADS_HELP, command, machine_info, write_report
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import NULL_BLOCK
from engine.torch_runner import TorchModelRunner

VOCAB, WINDOW, BLOCK, CHUNK = 512, 32, 8, 64
OLD_BLOCKS = 160  # whole-model blocks: 1,280 tokens of every layer, two 512-token requests


def save_model(kind: str, out: Path) -> Path:
    import transformers as hf

    torch.manual_seed(0)
    common = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024, "sliding_window": WINDOW}
    if kind == "gpt_oss":
        model = hf.GptOssForCausalLM(hf.GptOssConfig(**common, num_hidden_layers=4, num_local_experts=4,
                                                     num_experts_per_tok=2))
    else:
        model = hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(**common, num_hidden_layers=6, sliding_window_pattern=6))
    model.save_pretrained(out)
    return out


def make_engine(model_dir: Path, hybrid: bool, max_num_seqs: int, old_blocks: int = OLD_BLOCKS) -> LLMEngine:
    """An engine whose cache takes as many bytes as `old_blocks` whole-model blocks, in either layout."""
    probe = TorchModelRunner(model_dir, 1, BLOCK, device="cpu", hybrid_kv_cache=hybrid)
    layers_per_block = probe.kv_groups.group_size if probe.kv_groups else probe.config.num_layers
    blocks = old_blocks * probe.config.num_layers // layers_per_block
    config = EngineConfig(block_size=BLOCK, num_blocks=blocks, max_model_len=1024, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max(256, max_num_seqs), long_prefill_token_threshold=CHUNK)
    return LLMEngine(config, TorchModelRunner(model_dir, blocks, BLOCK, device="cpu", hybrid_kv_cache=hybrid))


def prompts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB) for _ in range(length)] for _ in range(count)]


def capacity(model_dir: Path, hybrid: bool, count: int) -> dict:
    engine = make_engine(model_dir, hybrid, max_num_seqs=count)
    params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts(count, 448, seed=1)):
        engine.add_request(f"r{i}", prompt, params)
    most_decoding = peak_blocks = steps = 0
    started = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
        steps += 1
        running = engine.scheduler.running
        most_decoding = max(most_decoding, sum(1 for seq in running if seq.num_output_tokens > 0))
        for seq in running:
            peak_blocks = max(peak_blocks, sum(1 for t in seq.block_tables for b in t if b != NULL_BLOCK))
    runner = engine.runner
    assert isinstance(runner, TorchModelRunner)
    block_bytes = runner.kv_cache[:, :, 0].numel() * runner.kv_cache.element_size()
    return {"kv_groups": runner.kv_groups.num_groups if runner.kv_groups else 1, "pool_blocks": engine.config.num_blocks,
            "kv_cache_bytes": runner.kv_cache.numel() * runner.kv_cache.element_size(),
            "max_model_len": engine.config.max_model_len, "most_decoding_at_once": most_decoding,
            "peak_blocks_per_request": peak_blocks, "peak_kv_bytes_per_request": peak_blocks * block_bytes,
            "preemptions": engine.scheduler.num_preemptions, "steps": steps,
            "wall_s": round(time.perf_counter() - started, 2)}


def decode_times(model_dir: Path, batch: int, steps: int) -> dict:
    """Per-token decode step time of both layouts over the same requests, their steps taken in turn."""
    # Room for the whole batch in either layout: the same requests decode together in both.
    engines = {name: make_engine(model_dir, hybrid, batch, old_blocks=batch * 72)
               for name, hybrid in (("old", False), ("new", True))}
    params = SamplingParams(max_tokens=steps + 32, temperature=0.0, ignore_eos=True)  # none ends while timed
    for engine in engines.values():
        for i, prompt in enumerate(prompts(batch, 480, seed=2)):
            engine.add_request(f"d{i}", prompt, params)
        while any(s.num_output_tokens == 0 for s in engine.sequences.values()):  # prefill, first tokens
            engine.step()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(steps):
        for name, engine in engines.items():
            running = engine.scheduler.running
            assert len(running) == batch and all(s.num_computed_tokens == s.num_tokens - 1 for s in running)
            start = time.thread_time()
            engine.step()
            times[name].append((time.thread_time() - start) / batch)
    old, new = (statistics.median(times[name]) for name in ("old", "new"))
    return {"batch": batch, "context_tokens": f"about {480 + steps // 2}", "steps": steps, "old_ms_per_token": old * 1e3,
            "new_ms_per_token": new * 1e3, "new_over_old": new / old}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--decode-steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "hybrid_kv.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.decode_steps = 4, 4
    torch.set_num_threads(args.threads)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("gpt_oss", "gemma3"):
            model_dir = save_model(kind, Path(tmp) / kind)
            runs = {name: capacity(model_dir, hybrid, args.requests) for name, hybrid in (("old", False), ("new", True))}
            decode = decode_times(model_dir, 8, args.decode_steps)
            models[kind] = {"capacity": runs, "decode": decode, "summary": {
                "concurrent_requests_new_over_old": runs["new"]["most_decoding_at_once"] / runs["old"]["most_decoding_at_once"],
                "kv_bytes_per_request_old_over_new":
                    runs["old"]["peak_kv_bytes_per_request"] / runs["new"]["peak_kv_bytes_per_request"],
                "decode_time_per_token_new_over_old": decode["new_over_old"]}}
            print(kind, models[kind]["summary"], {n: r["most_decoding_at_once"] for n, r in runs.items()}, flush=True)
    report = {"command": command("bench.hybrid_kv", argv), "machine": machine_info(),
              "setup": {"models": {"gpt_oss": "4 layers (sliding, full) x 2, hidden 64, 4 experts",
                                   "gemma3": "6 layers (5 sliding, 1 full), hidden 64"},
                        "window_tokens": WINDOW, "block_size": BLOCK, "prefill_chunk": CHUNK,
                        "kv_bytes": f"{OLD_BLOCKS} whole-model blocks in both layouts",
                        "capacity_requests": f"{args.requests} at once, 448-token prompts, 64 tokens out"},
              "models": models}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
