"""KV groups with a host KV tier behind them (engine/group_tiers.py) against the same host tier behind the old
layout that keeps every block of every layer (what the engine did before: a tier turned KV groups off), at the
same GPU KV bytes and the same host bytes, on bench/hybrid_kv.py's small random CPU models (a gpt-oss-like one
and a Gemma-3-like one, windows of 32 tokens, blocks of 8).

Agent sessions: each runs a first turn (a 448-token prompt, 32 tokens out) and is pinned through its tool call;
then every session comes back with 32 tokens more. The pins give way to the later sessions' turns and spill to
the host tier; a second turn loads its prefix from the GPU or the host, or prefills it again. Reported: the
sessions whose whole prefix came back (from either), the prompt tokens prefilled again, the host blocks a
spilled session takes, and whether both layouts answered every turn alike (greedy).

Writes bench/results/hybrid_kv_tiers.json.

    .venv/bin/python -m bench.hybrid_kv_tiers            # about a minute on 2 cores
    .venv/bin/python -m bench.hybrid_kv_tiers --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, THREADS_HELP, command, machine_info, write_report
from bench.hybrid_kv import BLOCK, CHUNK, OLD_BLOCKS, WINDOW, prompts, save_model
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner

PROMPT, OUT, FOLLOW_UP = 448, 32, 32
CACHEABLE = (PROMPT + OUT - 1) // BLOCK * BLOCK  # a first turn's full blocks: what a second turn can take back


def make_engine(model_dir: Path, hybrid: bool, host_factor: int) -> LLMEngine:
    """GPU KV of `OLD_BLOCKS` whole-model blocks' bytes and `host_factor` times that in host memory, either layout."""
    probe = TorchModelRunner(model_dir, 1, BLOCK, device="cpu", hybrid_kv_cache=hybrid)
    layers_per_block = probe.kv_groups.group_size if probe.kv_groups else probe.config.num_layers
    blocks = OLD_BLOCKS * probe.config.num_layers // layers_per_block
    host = blocks * host_factor
    config = EngineConfig(block_size=BLOCK, num_blocks=blocks, max_model_len=1024, max_num_seqs=4,
                          max_num_batched_tokens=256, long_prefill_token_threshold=CHUNK, num_host_blocks=host)
    return LLMEngine(config, TorchModelRunner(model_dir, blocks, BLOCK, device="cpu", hybrid_kv_cache=hybrid,
                                              num_host_blocks=host))


def _finish(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()


def sessions(model_dir: Path, hybrid: bool, count: int, host_factor: int) -> dict:
    engine = make_engine(model_dir, hybrid, host_factor)
    params = SamplingParams(max_tokens=OUT, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    first = {f"s{i}": engine.add_request(f"t1-s{i}", prompt, params, session_id=f"s{i}", pin_ttl_s=3600.0)
             for i, prompt in enumerate(prompts(count, PROMPT, seed=1))}
    _finish(engine)
    spilled_at = engine.stats().blocks.host
    follow_ups = dict(zip(first, prompts(count, FOLLOW_UP, seed=2), strict=True))
    second = {}
    for name, seq in first.items():  # each agent back from its tool call in turn
        second[name] = engine.add_request(f"t2-{name}", seq.token_ids + follow_ups[name], params, session_id=name)
        _finish(engine)
    stats = engine.stats().blocks
    runner = engine.runner
    assert isinstance(runner, TorchModelRunner)
    block_bytes = runner.kv_cache[:, :, 0].numel() * runner.kv_cache.element_size()
    host_saved = stats.host.saved_blocks if stats.host else 0
    return {
        "kv_groups": runner.kv_groups.num_groups if runner.kv_groups else 1, "gpu_blocks": engine.config.num_blocks,
        "host_slots": engine.config.num_host_blocks, "slot_bytes": block_bytes,
        "host_bytes": engine.config.num_host_blocks * block_bytes,
        "sessions_resumed_whole": sum(1 for s in second.values() if s.num_cached_tokens >= CACHEABLE),
        "reprefill_tokens": sum(max(0, CACHEABLE - s.num_cached_tokens) for s in second.values()),
        "host_hit_tokens": stats.host_hit_tokens, "gpu_hit_tokens": stats.prefix_hit_tokens,
        "host_slots_saved_after_first_turns": spilled_at.saved_blocks if spilled_at else 0,
        "host_bytes_saved": host_saved * block_bytes, "pins_given_way": engine.block_manager.pins.counters.evicted,
        "wall_s": round(time.perf_counter() - started, 2),
        "answers": {name: s.output_token_ids for name, s in second.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--host-factor", type=int, default=2, help="host KV bytes over the GPU's")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "hybrid_kv_tiers.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions = 4
    torch.set_num_threads(args.threads)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("gpt_oss", "gemma3"):
            model_dir = save_model(kind, Path(tmp) / kind)
            runs = {name: sessions(model_dir, hybrid, args.sessions, args.host_factor)
                    for name, hybrid in (("tiers_without_groups", False), ("tiers_with_groups", True))}
            old, new = runs["tiers_without_groups"], runs["tiers_with_groups"]
            same = old.pop("answers") == new.pop("answers")
            models[kind] = {"runs": runs, "summary": {
                "sessions_resumed_whole": [old["sessions_resumed_whole"], new["sessions_resumed_whole"]],
                "reprefill_tokens": [old["reprefill_tokens"], new["reprefill_tokens"]],
                "reprefill_tokens_saved": old["reprefill_tokens"] - new["reprefill_tokens"],
                "same_answers": same}}
            print(kind, models[kind]["summary"], flush=True)
    report = {"command": command("bench.hybrid_kv_tiers", argv), "machine": machine_info(),
              "setup": {"models": {"gpt_oss": "4 layers (sliding, full) x 2, hidden 64, 4 experts",
                                   "gemma3": "6 layers (5 sliding, 1 full), hidden 64"},
                        "window_tokens": WINDOW, "block_size": BLOCK, "prefill_chunk": CHUNK,
                        "gpu_kv_bytes": f"{OLD_BLOCKS} whole-model blocks in both layouts",
                        "host_kv_bytes": f"{args.host_factor}x the GPU's",
                        "sessions": f"{args.sessions}: a {PROMPT}-token first turn, {OUT} out, pinned; "
                                    f"then {FOLLOW_UP} tokens more each, in turn",
                        "summary_pairs": "[tiers without groups, tiers with groups]"},
              "models": models}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
