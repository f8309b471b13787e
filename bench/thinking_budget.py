"""What a thinking budget (engine/thinking_budget.py) costs a step on the torch runner: decode steps of
sequences whose prompts open a `<think>` block, without a budget, with one the answers never reach (the
block's state kept token by token), and with one they reach at once (every row masked to the end tag for
as many steps as the tag has tokens), side by side in alternating rounds on this CPU, one thread.

    .venv/bin/python -m bench.thinking_budget [--batch 8] [--context 256] [--rounds 30]

Writes bench/results/thinking_budget.json."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import command, machine_info, write_report

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"no budget": None, "budget never reached": 1_000_000, "budget reached (end tag forced)": 0}


def measure(model_dir: Path, batch: int, context: int, rounds: int) -> dict:
    import random

    import torch

    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from engine.tokenizer import Tokenizer
    from engine.torch_runner import TorchModelRunner

    torch.set_num_threads(1)
    tokenizer = Tokenizer(model_dir)
    start, end = tokenizer.encode("<think>"), tokenizer.encode("</think>")
    steps = len(end)  # the forced variant masks every row for this many steps
    rng = random.Random(0)
    prompts = [[rng.randrange(300, 1000) for _ in range(context - len(start))] + start for _ in range(batch)]
    blocks = batch * (-(-(context + steps + 8) // 16)) + 8
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_index in range(rounds):
        for name, budget in VARIANTS.items():
            engine = LLMEngine(EngineConfig(num_blocks=blocks, max_model_len=context + 64, max_num_seqs=batch,
                                            max_num_batched_tokens=max(2048, batch * context)),
                               TorchModelRunner(model_dir, blocks, 16, device="cpu", dtype=torch.float32),
                               tokenizer=tokenizer)
            seqs = [engine.add_request(f"{round_index}-{i}", p, SamplingParams(
                max_tokens=steps + 2, temperature=0, ignore_eos=True, thinking_token_budget=budget))
                for i, p in enumerate(prompts)]
            while any(s.num_output_tokens == 0 for s in seqs):
                engine.step()  # the prefill, and each sequence's first token
            for _ in range(steps - 1):  # the rest of the end tag (forced in that variant)
                started = time.perf_counter()
                engine.step()
                times[name].append(time.perf_counter() - started)
            if budget == 0:
                assert all(s.output_token_ids[:steps] == end for s in seqs), "the end tag was not forced"
    medians = {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()}
    base = medians["no budget"]
    print(", ".join(f"{name}: {ms:.2f} ms" for name, ms in medians.items()), flush=True)
    return {"batch": batch, "context": context, "end_tag_tokens": len(end), "steps_each": len(times["no budget"]),
            "median_step_ms": medians, "over_no_budget": {name: round(ms / base, 3) for name, ms in medians.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS / "thinking_budget.json")
    args = parser.parse_args(argv)
    from engine.tiny_model import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="pitstop-thinking-") as tmp:
        model_dir = make_tiny_model(Path(tmp) / "model", layers=4, hidden=256, heads=4, kv_heads=2, vocab_size=4096,
                                    max_position_embeddings=4096)
        result = measure(model_dir, args.batch, args.context, args.rounds)
    report = {"command": command("bench.thinking_budget", argv), "machine": machine_info(),
              "model": "random weights: 4 layers, hidden 256, 4 heads, 2 KV heads, vocab 4096, float32, one thread",
              **result}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
