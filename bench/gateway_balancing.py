"""What latency-aware balancing (`server.routing_strategy: latency`, gateway/latency_balance.py) does when a
model's deployments answer at different speeds: least outstanding requests (the default) and latency,
side by side, on the same arrival schedule.

    .venv/bin/python -m bench.gateway_balancing [--rates 5 20 50] [--duration 20]

One model with two deployments, each a mock upstream (bench/mock_upstream.py: 10 chunks 5 ms apart), the
first listed slow to start (first byte after 320 ms) and the second fast (20 ms): say one provider's
region far away, or a loaded replica. Whole answers (latency) and streams (time to first token); open-loop
Poisson arrivals (bench/loadgen.py, the same seed each run; the first 2 s warm up, unrecorded); fresh
processes for every run. The share each deployment served comes from the mocks' own counts. Writes
bench/results/gateway_balancing.json."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import RESULTS, machine_info, save_runs
from bench.loadgen import LoadSpec, run_load
from bench.procs import gateway_on_mocks

OUT = RESULTS / "gateway_balancing.json"
STRATEGIES = ("least-outstanding", "latency")
SLOW_MS, FAST_MS = 320, 20


def write_config(path: Path, bases: list[str], strategy: str) -> None:
    models = [{"model_name": "mock", "litellm_params": {"model": "hosted_vllm/mock", "api_base": f"{base}/v1"},
               "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}} for base in bases]
    config: dict[str, Any] = {
        "model_list": models, "ranking": {"enabled": False}, "server": {"routing_strategy": strategy},
        "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / "spool.jsonl")}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_one(rate: float, stream: bool, strategy: str, args: argparse.Namespace) -> dict:
    common = ["--chunks", "10", "--chunk-interval-ms", "5"]
    mocks = [[*common, "--delay-ms", str(delay)] for delay in (SLOW_MS, FAST_MS)]  # the slow one first: ties go to it
    with tempfile.TemporaryDirectory(prefix="pitstop-balancing-") as tmp, gateway_on_mocks(
            Path(tmp), mocks, lambda path, bases: write_config(path, bases, strategy)) as (gateway_url, mock_urls):
        load_before = os.getloadavg()[0]
        spec = LoadSpec(url=f"{gateway_url}/v1/chat/completions", rate=rate, stream=stream,
                        duration_s=args.duration, model="mock", seed=args.seed, timeout_s=10.0, warmup_s=2.0)
        result = asyncio.run(run_load(spec))
        served = [httpx.get(f"{url}/stats", timeout=10).json().get("served", 0) for url in mock_urls]
    row = {"rate_per_s": rate, "stream": stream, "strategy": strategy, "sent": result["sent"], "ok": result["ok"],
           "error_kinds": result["error_kinds"], "latency_ms": result["latency_ms"], "ttft_ms": result["ttft_ms"],
           "served": {"slow": served[0], "fast": served[1]},
           "slow_share": round(served[0] / sum(served), 4) if sum(served) else None,
           "schedule_lag_ms_p99": result["schedule_lag_ms"]["p99"],
           "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    shown = row["ttft_ms"] if stream else row["latency_ms"]
    print(f"{rate:5.0f}/s {'ttft' if stream else 'whole':5s} {strategy:18s} ok {row['ok']}/{row['sent']}  "
          f"mean {shown['mean']} p50 {shown['p50']} p99 {shown['p99']} ms  slow share {row['slow_share']}  "
          f"load {row['load_avg_1m']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 20.0, 50.0], help="requests a second")
    parser.add_argument("--duration", type=float, default=20.0, help="recorded seconds a run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    machine = machine_info()
    rows = [run_one(rate, stream, strategy, args)
            for rate in args.rates for stream in (False, True) for strategy in STRATEGIES]
    settings = {"rates_per_s": args.rates, "duration_s": args.duration, "warmup_s": 2.0,
                "first_byte_ms": {"slow": SLOW_MS, "fast": FAST_MS}, "chunks": 10, "chunk_interval_ms": 5}
    return save_runs("bench.gateway_balancing", argv, args.out, settings, rows, machine)


if __name__ == "__main__":
    main()
