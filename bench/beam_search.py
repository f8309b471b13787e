"""What beam search costs on the engine against sampling as many sequences: the same width of answers of the
same length from one prompt, on the CPU.

    .venv/bin/python -m bench.beam_search [--width 4] [--tokens 32] [--prompt 256] [--reps 5]

A random Llama (engine/tiny_model.py: 4 layers, hidden 256) served by an in-process AsyncEngine with one torch
thread and prefix caching. Beam search (engine/beam_search.py) runs a request a beam a step, each sharing its
prompt and its parent's tokens through the prefix cache; sampling runs `n` sequences of `--tokens` each
(`ignore_eos`, so both produce the same tokens). Reported: median wall seconds of each, interleaved over
`--reps` runs, and the tokens beam search prefilled against what it would without the cache (every beam
recomputing its prompt and answer each step).

Writes bench/results/beam_search.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, command, machine_info, write_report  # noqa: E402
from engine.async_engine import AsyncEngine  # noqa: E402
from engine.beam_search import BeamSearchParams, BeamSearchResult, beam_search  # noqa: E402
from engine.build import build_engine  # noqa: E402
from engine.outputs import RequestOutput  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.tiny_model import make_tiny_model  # noqa: E402

OUT = RESULTS / "beam_search.json"


async def _beams(engine: AsyncEngine, prompt: list[int], width: int, tokens: int, rep: int) -> BeamSearchResult:
    def generate(ids: Sequence[int], params: SamplingParams, rid: str) -> AsyncIterator[RequestOutput]:
        return engine.generate(list(ids), params, rid)

    return await beam_search(generate, prompt, BeamSearchParams(width, tokens, ignore_eos=True), eos_ids=(),
                             max_model_len=engine.max_model_len, request_id=f"beam-{rep}")


async def _sampled(engine: AsyncEngine, prompt: list[int], width: int, tokens: int, rep: int) -> None:
    params = SamplingParams(temperature=1.0, max_tokens=tokens, ignore_eos=True, seed=rep)

    async def one(j: int) -> None:
        async for _ in engine.generate(prompt, params, f"sample-{rep}-{j}"):
            pass

    await asyncio.gather(*(one(j) for j in range(width)))


async def _run(model_dir: Path, args: argparse.Namespace) -> dict:
    engine = build_engine(model_dir, num_blocks=1024, block_size=16, max_model_len=2048, device="cpu")
    await engine.start()
    rng = random.Random(0)
    beam_s, sample_s, result = [], [], None
    try:
        for rep in range(args.reps + 1):  # the first of each warms up and is dropped
            prompt = [rng.randrange(1, 1000) for _ in range(args.prompt)]  # a new prompt a rep: no stale hits
            start = time.perf_counter()
            result = await _beams(engine, prompt, args.width, args.tokens, rep)
            beam_s.append(time.perf_counter() - start)
            prompt = [rng.randrange(1, 1000) for _ in range(args.prompt)]
            start = time.perf_counter()
            await _sampled(engine, prompt, args.width, args.tokens, rep)
            sample_s.append(time.perf_counter() - start)
    finally:
        await engine.shutdown()
    assert result is not None
    uncached = sum(len(result.beams) * (args.prompt + step) if step else args.prompt for step in range(result.steps))
    beam, sample = statistics.median(beam_s[1:]), statistics.median(sample_s[1:])
    return {"beam_search_s": beam, "sampling_s": sample, "beam_vs_sampling": beam / sample,
            "beam_prefilled_tokens": sum(result.computed_tokens), "prefilled_without_cache": uncached,
            "prefill_saved": 1 - sum(result.computed_tokens) / uncached}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "model", layers=4, hidden=256, heads=8, kv_heads=4)
        measured = asyncio.run(_run(model_dir, args))
    report = {"command": command("bench.beam_search", argv), "machine": machine_info(), "width": args.width,
              "tokens": args.tokens, "prompt_tokens": args.prompt, "reps": args.reps, **measured}
    write_report(args.out, report)
    print(json.dumps(measured, indent=2))
    return report


if __name__ == "__main__":
    main()
