"""What hedged requests (`hedging:`, gateway/hedging.py) do for a model's tail latency, and what they cost
in extra upstream calls: hedging off and on, side by side, on the same arrival schedule.

    .venv/bin/python -m bench.gateway_hedging [--rate 20] [--duration 25] [--slow-rate 0.05] [--slow-ms 1500]

One model with two deployments, each a mock upstream (bench/mock_upstream.py: first byte after 20 ms,
then 10 chunks 5 ms apart). Scenarios, each run with fresh processes:
  tail          each deployment makes `--slow-rate` of its requests (a seeded draw) wait `--slow-ms` before
                the first byte: a slow replica's bad moment; whole answers, and streams (time to first token)
  slow_replica  one deployment always 300 ms slower than the other (320 ms against 20 ms), whole answers
Hedging: off; adaptive (the defaults: the 95th percentile of the model's last 200 first-byte latencies,
at least 50 ms, once 20 are known; hedges at most 10% of requests, 5 back to back); and for the slow
replica a fixed 50 ms delay too, with that budget and with half the requests'. Open-loop Poisson arrivals (bench/loadgen.py, the same seed each run;
the first 2 s warm up and fill the window, unrecorded). Writes bench/results/gateway_hedging.json."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import RESULTS, machine_info, save_runs
from bench.loadgen import LoadSpec, run_load
from bench.procs import gateway_on_mocks

OUT = RESULTS / "gateway_hedging.json"
HEDGING: dict[str, dict | None] = {
    "off": None, "adaptive": {"enabled": True}, "fixed_50ms": {"enabled": True, "delay_s": 0.05},
    "fixed_50ms_share_0.5": {"enabled": True, "delay_s": 0.05, "max_extra_share": 0.5}}
RUNS = [("tail", False, "off"), ("tail", False, "adaptive"), ("tail", True, "off"), ("tail", True, "adaptive"),
        ("slow_replica", False, "off"), ("slow_replica", False, "adaptive"), ("slow_replica", False, "fixed_50ms"),
        ("slow_replica", False, "fixed_50ms_share_0.5")]
_HEDGES = re.compile(r'^pitstop_hedges_total\{model="mock",outcome="(\w+)"\} ([0-9.e+]+)$', re.M)
SENT_OUTCOMES = ("won", "lost", "failed", "cancelled")  # a hedge sent ends as one of these


def replica_options(scenario: str, args: argparse.Namespace) -> list[list[str]]:
    common = ["--chunks", "10", "--chunk-interval-ms", "5"]
    if scenario == "tail":
        tail = ["--delay-ms", "20", "--slow-rate", str(args.slow_rate), "--slow-delay-ms", str(args.slow_ms)]
        return [[*common, *tail, "--seed", "11"], [*common, *tail, "--seed", "12"]]
    return [[*common, "--delay-ms", "320"], [*common, "--delay-ms", "20"]]  # the slow one first: ties go to it


def write_config(path: Path, bases: list[str], hedging: dict | None) -> None:
    models = [{"model_name": "mock", "litellm_params": {"model": "hosted_vllm/mock", "api_base": f"{base}/v1"},
               "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}} for base in bases]
    config: dict[str, Any] = {
        "model_list": models, "ranking": {"enabled": False},
        "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / "spool.jsonl")}}
    if hedging is not None:
        config["hedging"] = hedging
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_one(scenario: str, stream: bool, hedging: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="pitstop-hedging-") as tmp, gateway_on_mocks(
            Path(tmp), replica_options(scenario, args),
            lambda path, bases: write_config(path, bases, HEDGING[hedging])) as (gateway_url, _):
        load_before = os.getloadavg()[0]
        spec = LoadSpec(url=f"{gateway_url}/v1/chat/completions", rate=args.rate, stream=stream,
                        duration_s=args.duration, model="mock", seed=args.seed, timeout_s=10.0, warmup_s=2.0)
        result = asyncio.run(run_load(spec))
        metrics = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    counts = {outcome: int(float(value)) for outcome, value in _HEDGES.findall(metrics)}
    extra_calls = sum(counts.get(outcome, 0) for outcome in SENT_OUTCOMES)
    row = {"scenario": scenario, "stream": stream, "hedging": hedging, "sent": result["sent"], "ok": result["ok"],
           "error_kinds": result["error_kinds"], "latency_ms": result["latency_ms"], "ttft_ms": result["ttft_ms"],
           "hedges": counts, "extra_calls": extra_calls,
           # of every request sent, the warm-up included: the upstream calls hedging added
           "extra_call_share": round(extra_calls / result["sent_total"], 4) if result["sent_total"] else None,
           "schedule_lag_ms_p99": result["schedule_lag_ms"]["p99"],
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    shown = row["ttft_ms"] if stream else row["latency_ms"]
    print(f"{scenario:12s} {'ttft' if stream else 'whole':5s} {hedging:20s} ok {row['ok']}/{row['sent']}  "
          f"p50 {shown['p50']} p95 {shown['p95']} p99 {shown['p99']} ms  extra calls {extra_calls} "
          f"({row['extra_call_share']:.1%})  load {row['load_avg_1m']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second")
    parser.add_argument("--duration", type=float, default=25.0, help="recorded seconds a run")
    parser.add_argument("--slow-rate", type=float, default=0.05, help="tail: share of each replica's slow requests")
    parser.add_argument("--slow-ms", type=float, default=1500.0, help="tail: their wait before the first byte")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    machine = machine_info()
    rows = [run_one(scenario, stream, hedging, args) for scenario, stream, hedging in RUNS]
    settings = {"rate_per_s": args.rate, "duration_s": args.duration, "warmup_s": 2.0,
                "upstream_first_byte_ms": 20, "chunks": 10, "chunk_interval_ms": 5,
                "tail": {"slow_rate": args.slow_rate, "slow_ms": args.slow_ms},
                "slow_replica_ms": 320, "hedging": HEDGING}
    return save_runs("bench.gateway_hedging", argv, args.out, settings, rows, machine)


if __name__ == "__main__":
    main()
