"""How fast the simulator runs: 10,000 requests of the Azure LLM inference trace (conversation) with
their real arrival times and lengths, through the real engine on a Llama-3.1-8B / H100 roofline.

    .venv/bin/python bench/sim_speed.py [--requests N] [--rate-scale X] [--profile]

Writes bench/results/engine_sim_speed.json: wall seconds, simulated seconds, requests and steps per
wall second, latency figures as a sanity check, and the machine it ran on."""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.roofline import RooflineStepTime  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.simulate import Arrival, RequestResult, make_sim_engine, simulate  # noqa: E402

DATA = ROOT / "../shared/data"
TRACE = DATA / "traces/azure2023/AzureLLMInferenceTrace_conv.csv"
OUT = ROOT / "bench/results/engine_sim_speed.json"


def read_trace(path: Path, limit: int) -> list[tuple[float, int, int]]:
    """(seconds since the first request, prompt tokens, output tokens) for the first `limit` rows."""
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stamp = datetime.strptime(row["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            rows.append((stamp, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            if len(rows) == limit:
                break
    start = rows[0][0]
    return [(t - start, max(p, 1), max(g, 1)) for t, p, g in rows]


def arrivals(trace: list[tuple[float, int, int]], rate_scale: float) -> Iterator[Arrival]:
    """Distinct prompts (the first two tokens encode the index, so no false prefix hits) sharing one
    pool of int objects, built lazily: memory stays flat however long the trace."""
    pool = list(range(1000, 1000 + max(p for _, p, _ in trace)))
    for i, (t, prompt_len, output_len) in enumerate(trace):
        prompt = [1 + i // 100_000, 1 + i % 100_000, *pool[: prompt_len - 2]] if prompt_len > 2 else [1 + i]
        yield Arrival(t / rate_scale, prompt, SamplingParams(max_tokens=output_len))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(results: list[RequestResult]) -> dict:
    done = [r for r in results if r.finish_reason == "length"]
    ttft = [r.ttft for r in done]
    tpot = [r.tpot for r in done if r.tpot is not None]
    latency = [r.latency for r in done]
    return {
        "completed": len(done), "rejected": sum(r.finish_reason == "rejected" for r in results),
        "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99),
        "latency_p50_s": pct(latency, 50), "latency_p99_s": pct(latency, 99),
        "preemptions": sum(r.num_preemptions for r in done),
        "prompt_tokens": sum(r.num_prompt_tokens for r in done),
        "output_tokens": sum(r.num_output_tokens for r in done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate-scale", type=float, default=1.0, help="arrivals this many times faster")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--gpu", default="H100-SXM")
    parser.add_argument("--profile", action="store_true", help="cProfile the run, print the top functions")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not TRACE.exists():
        sys.exit(f"trace not found: {TRACE.resolve()} (expected the shared data folder at {DATA.resolve()})")

    trace = read_trace(TRACE, args.requests)
    step_time = RooflineStepTime.builtin(args.model, args.gpu)
    engine = make_sim_engine(step_time)
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    results = simulate(engine, arrivals(trace, args.rate_scale))
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - started

    simulated = engine.clock.now()
    report = {
        "requests": len(results), "wall_s": round(wall, 3), "simulated_s": round(simulated, 3),
        "requests_per_wall_s": round(len(results) / wall, 1), "simulated_s_per_wall_s": round(simulated / wall, 2),
        "steps": engine.num_steps, "steps_per_wall_s": round(engine.num_steps / wall, 1),
        "profiled": bool(profiler),
        "workload": {"trace": "azure2023 conversation", "rate_scale": args.rate_scale,
                     "mean_prompt_tokens": round(statistics.fmean(p for _, p, _ in trace), 1),
                     "mean_output_tokens": round(statistics.fmean(g for _, _, g in trace), 1),
                     "offered_requests_per_s": round(len(trace) / (trace[-1][0] / args.rate_scale), 2)},
        "engine": {"model": args.model, "gpu": args.gpu, "num_blocks": engine.config.num_blocks,
                   "block_size": engine.config.block_size, "max_num_seqs": engine.config.max_num_seqs,
                   "max_num_batched_tokens": engine.config.max_num_batched_tokens,
                   "long_prefill_token_threshold": engine.config.long_prefill_token_threshold},
        "results": {k: round(v, 4) if isinstance(v, float) else v for k, v in summarize(results).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
    }
    if not profiler:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
