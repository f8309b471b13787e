"""Multi-LoRA serving on the torch runner (engine/model/lora.py): what a step costs when its batch mixes
requests of several adapters, against the base model alone, and the memory adapters take next to
serving each as a merged model.

Random-weight models (4 layers of hidden 256, MLP 688; 2 of hidden 1024, MLP 2816) on this CPU, one torch
thread, adapters of rank 16 on every projection. Decode steps of 8 sequences at 256 tokens of context with 0 (the base model), 1, 2, 4
and 8 distinct adapters among them, and prefill steps of 4 prompts of 128 tokens with 0, 1 and 4;
medians, every configuration's engine stepped in turn in alternating rounds. Writes
bench/results/lora.json.

    .venv/bin/python -m bench.lora            # full run (about a minute on 2 cores)
    .venv/bin/python -m bench.lora --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import command, machine_info, write_report

RESULTS = Path(__file__).parent / "results"
SIZES = [(4, 256, 688), (2, 1024, 2816)]  # (layers, hidden, MLP): small, and wide enough for matmuls to count


def _engine(model_dir: Path, adapters: dict[str, Path], blocks: int, max_len: int):  # noqa: ANN202 - bench helper
    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.torch_runner import TorchModelRunner

    runner = TorchModelRunner(model_dir, blocks, 16, device="cpu", dtype=torch.float32)
    engine = LLMEngine(EngineConfig(num_blocks=blocks, max_model_len=max_len, max_num_seqs=16,
                                    max_num_batched_tokens=2048, long_prefill_token_threshold=2048,
                                    enable_prefix_caching=False, max_loras=len(adapters) or 1), runner)
    for name, path in adapters.items():
        engine.add_lora(name, str(path))
    return engine


def _timed_step(engine) -> float:  # noqa: ANN001
    started = time.perf_counter()
    engine.step()
    return time.perf_counter() - started


def decode_steps(model_dir: Path, adapters: dict[str, Path], counts: list[int], batch: int, context: int,
                 steps: int, rounds: int) -> list[dict]:
    """Median decode step with `count` distinct adapters among `batch` sequences (0: the base model)."""
    from engine.sampling_params import SamplingParams

    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(context)] for _ in range(batch)]
    max_len = context + steps * rounds + 16
    engines = {}
    for count in counts:
        engine = _engine(model_dir, adapters, batch * (-(-max_len // 16)), max_len)
        names = list(adapters)[:count]
        params = SamplingParams(max_tokens=steps * rounds + 8, ignore_eos=True, temperature=0)
        seqs = [engine.add_request(f"s{i}", p, params, lora=names[i % count] if count else None)
                for i, p in enumerate(prompts)]
        while any(s.num_output_tokens == 0 for s in seqs):
            engine.step()
        engines[count] = engine
    times: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(rounds):
        for count, engine in engines.items():
            times[count] += [_timed_step(engine) for _ in range(steps)]
    base = statistics.median(times[0])
    return [{"adapters": count, "median_step_ms": round(statistics.median(t) * 1e3, 3),
             "over_base": round(statistics.median(t) / base, 3)} for count, t in times.items()]


def prefill_steps(model_dir: Path, adapters: dict[str, Path], counts: list[int], prompts_n: int, length: int,
                  rounds: int) -> list[dict]:
    """Median step prefilling `prompts_n` prompts of `length` tokens with `count` distinct adapters."""
    from engine.sampling_params import SamplingParams

    rng = random.Random(1)
    times: dict[int, list[float]] = {count: [] for count in counts}
    engines = {count: _engine(model_dir, adapters, prompts_n * (-(-(length + 16) // 16)), length + 16)
               for count in counts}
    for r in range(rounds):
        prompts = [[rng.randrange(1000) for _ in range(length)] for _ in range(prompts_n)]
        for count, engine in engines.items():
            names = list(adapters)[:count]
            for i, prompt in enumerate(prompts):
                engine.add_request(f"p{r}-{i}", prompt, SamplingParams(max_tokens=1, temperature=0),
                                   lora=names[i % count] if count else None)
            times[count].append(_timed_step(engine))  # the whole batch's prefill, one step
            while engine.has_unfinished():
                engine.step()
    base = statistics.median(times[0])
    return [{"adapters": count, "median_step_ms": round(statistics.median(t) * 1e3, 3),
             "over_base": round(statistics.median(t) / base, 3)} for count, t in times.items()]


def measure(root: Path, layers: int, hidden: int, intermediate: int, args: argparse.Namespace) -> dict:
    from engine.model.config import ModelConfig
    from engine.tiny_lora import make_tiny_lora
    from engine.tiny_model import make_tiny_model

    model_dir = make_tiny_model(root / "model", layers=layers, hidden=hidden, heads=hidden // 64, kv_heads=2,
                                intermediate=intermediate, vocab_size=4096, max_position_embeddings=4096)
    adapters = {f"a{i}": make_tiny_lora(model_dir, root / f"a{i}", rank=args.rank, seed=i) for i in range(8)}
    runner = _engine(model_dir, {"a0": adapters["a0"]}, 8, 64).runner
    base_params = sum(p.numel() for p in runner.model.parameters())
    adapter_params = runner.lora.adapters[1].num_params
    config = ModelConfig.from_dir(model_dir)
    decode = decode_steps(model_dir, adapters, [0, 1, 2, 4, 8], 8, 256, args.steps, args.rounds)
    prefill = prefill_steps(model_dir, adapters, [0, 1, 4], 4, 128, args.rounds * 2)
    for kind, rows in (("decode", decode), ("prefill", prefill)):
        for row in rows:
            print(f"hidden {hidden} {kind}, {row['adapters']} adapters: {row['median_step_ms']:.2f} ms "
                  f"({row['over_base']:.3f}x base)", flush=True)
    return {
        "model": {"layers": config.num_layers, "hidden": config.hidden_size, "intermediate": config.intermediate_size,
                  "params": base_params, "dtype": "float32"},
        "adapter": {"rank": args.rank, "targets": "q, k, v, o, gate, up, down", "params": adapter_params,
                    "share_of_model": round(adapter_params / base_params, 4)},
        "memory_8_adapters": {"one_engine_params": base_params + 8 * adapter_params,
                              "eight_merged_models_params": 8 * base_params},
        "decode": {"batch": 8, "context": 256, "steps_each": args.steps * args.rounds, "rows": decode},
        "prefill": {"prompts": 4, "tokens_each": 128, "steps_each": args.rounds * 2, "rows": prefill},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "lora.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    if args.quick:
        args.steps, args.rounds = 2, 2
    tmp = tempfile.TemporaryDirectory(prefix="pitstop-lora-")
    report: dict = {"command": command("bench.lora", argv), "machine": machine_info(), "models": []}
    for layers, hidden, intermediate in SIZES[:1] if args.quick else SIZES:
        report["models"].append(measure(Path(tmp.name) / f"h{hidden}", layers, hidden, intermediate, args))
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
