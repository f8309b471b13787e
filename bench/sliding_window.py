"""Releasing the KV blocks that slid out of a sliding-window model's window (engine/block_manager.py)
against keeping them to the request's end, for long-context requests on Mistral-7B-v0.1 (every layer
slides over 4,096 tokens; 32,768 of context) on one simulated H100 (roofline step times, its whole KV).

Requests: prompts of 8k-28k tokens (uniform), answers of 256-1,024 tokens, Poisson arrivals at several
rates; the same requests both ways. Both price a step on the keys its queries read (the window); only
the memory differs. Writes bench/results/sliding_window.json.

    .venv/bin/python -m bench.sliding_window            # full run (about a minute on 2 cores)
    .venv/bin/python -m bench.sliding_window --quick    # smaller, for a smoke test"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from bench.common import command, machine_info, write_report
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.simulate import Arrival, make_sim_engine, simulate

RESULTS = Path(__file__).parent / "results"


def make_requests(count: int, rate: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(count):
        t += rng.expovariate(rate)
        prompt = [rng.randrange(1, 32_000) for _ in range(rng.randint(8_000, 28_000))]
        out.append(Arrival(t, prompt, SamplingParams(max_tokens=rng.randint(256, 1024), ignore_eos=True), f"r{i}"))
    return out


def run(requests: list[Arrival], release: bool) -> dict:
    model = RooflineStepTime.builtin("mistral-7b-v0.1")
    engine = make_sim_engine(model, release_slid_out_blocks=release)
    started = time.perf_counter()
    results = simulate(engine, requests)
    wall = time.perf_counter() - started
    done = [r for r in results if r.finish_time is not None]
    latency = sorted(r.finish_time - r.arrival_time for r in done)  # type: ignore[operator]
    ttft = sorted(r.ttft for r in done if r.ttft is not None)
    span = max(r.finish_time for r in done) - min(r.arrival_time for r in results)  # type: ignore[type-var]
    return {"release_slid_out_blocks": release, "num_blocks": engine.config.num_blocks,
            "completed": len(done), "latency_avg_s": round(statistics.fmean(latency), 2),
            "latency_p90_s": round(latency[int(0.9 * (len(latency) - 1))], 2),
            "ttft_avg_s": round(statistics.fmean(ttft), 2), "ttft_p90_s": round(ttft[int(0.9 * (len(ttft) - 1))], 2),
            "output_tokens_per_s": round(sum(r.num_output_tokens for r in done) / span, 1),
            "preemptions": engine.stats().num_preemptions, "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rates", type=float, nargs="*", default=[0.5, 0.8, 1.0, 1.2, 1.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "sliding_window.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rates = 30, [0.3]
    rows = []
    for rate in args.rates:
        requests = make_requests(args.requests, rate, args.seed)
        for release in (False, True):
            row = {"rate_per_s": rate, **run(requests, release)}
            rows.append(row)
            print(f"rate {rate:4.2f} release {release!s:5s} latency {row['latency_avg_s']:7.1f} "
                  f"p90 {row['latency_p90_s']:7.1f} ttft {row['ttft_avg_s']:6.1f} out/s {row['output_tokens_per_s']:7.1f} "
                  f"preemptions {row['preemptions']} ({row['wall_s']} s)", flush=True)
    summary = []
    for rate in args.rates:
        kept, released = (next(r for r in rows if r["rate_per_s"] == rate and r["release_slid_out_blocks"] is b)
                          for b in (False, True))
        summary.append({"rate_per_s": rate, "latency_ratio_kept_over_released": round(
            kept["latency_avg_s"] / released["latency_avg_s"], 3), "throughput_ratio_released_over_kept": round(
            released["output_tokens_per_s"] / kept["output_tokens_per_s"], 3)})
    report = {"command": command("bench.sliding_window", argv), "machine": machine_info(),
              "setup": {"model": "mistral-7b-v0.1 (4,096-token window in every layer) on H100-SXM, roofline",
                        "requests": args.requests, "prompt_tokens": "8,000-28,000 uniform",
                        "output_tokens": "256-1,024 uniform"},
              "summary": summary, "runs": rows}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
