"""What per-deployment rate limits (litellm_params `rpm`, gateway/deployment_limits.py) do when a model's
deployments have provider quotas: the share of requests answered, their latency and the 429s the
providers answered, with and without the gateway keeping the quotas, side by side on one schedule.

    .venv/bin/python -m bench.gateway_deployment_limits [--rates 2.25 2.75] [--duration 90] [--quota-rpm 90]

Two mock upstreams (bench/mock_upstream.py, answering after `--delay-ms`), each a provider with a quota of
`--quota-rpm` chat requests in a sliding 60 s window (`--limit-rpm`: past it, a 429 with retry-after), both
deployments of one model `m`. Offered load: open-loop Poisson arrivals at each of `--rates` a second
(bench/loadgen.py, the same seeded schedule for both runs of a rate), above one quota and below their sum. The gateway has its defaults
(2 retries on another deployment, a deployment cooling down 30 s after 3 failures in a row) and either no
`rpm` (the providers' 429s are its only signal) or `rpm: quota` on each deployment. Fresh processes each
run. Writes bench/results/gateway_deployment_limits.json."""

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

from bench.common import RESULTS, save_runs
from bench.loadgen import LoadSpec, run_load
from bench.procs import gateway_on_mocks

OUT = RESULTS / "gateway_deployment_limits.json"


def _metric_sum(metrics: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", metrics, re.M))


def write_config(path: Path, upstreams: list[str], rpm: int | None) -> None:
    models = [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/m", "api_base": f"{base}/v1",
                                                     **({"rpm": rpm} if rpm else {})},
               "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}} for base in upstreams]
    config: dict[str, Any] = {
        "model_list": models, "ranking": {"enabled": False},
        "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / "spool.jsonl")}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_one(rate: float, limits: bool, args: argparse.Namespace) -> dict:
    mocks = [["--delay-ms", str(args.delay_ms), "--limit-rpm", str(args.quota_rpm)]] * 2  # two providers' regions
    with tempfile.TemporaryDirectory(prefix="pitstop-deployment-limits-") as tmp, gateway_on_mocks(
            Path(tmp), mocks, lambda path, bases: write_config(path, bases, args.quota_rpm if limits else None)
    ) as (gateway_url, mock_urls):
        load_before = os.getloadavg()[0]
        spec = LoadSpec(url=f"{gateway_url}/v1/chat/completions", rate=rate,
                        duration_s=args.duration, model="m", seed=args.seed, timeout_s=30.0, warmup_s=0.0)
        result = asyncio.run(run_load(spec))
        load_after = os.getloadavg()[0]
        metrics = httpx.get(f"{gateway_url}/metrics", timeout=10).text
        upstream = [httpx.get(f"{url}/stats", timeout=10).json() for url in mock_urls]
    row = {"rate_per_s": rate, "gateway_rpm": args.quota_rpm if limits else None, "sent": result["sent"], "ok": result["ok"],
           "success_rate": round(result["ok"] / result["sent"], 4) if result["sent"] else None,
           "error_kinds": result["error_kinds"],
           "latency_ms": result["latency_ms"], "schedule_lag_ms_p99": result["schedule_lag_ms"]["p99"],
           "upstream_served": [u["served"] for u in upstream],
           "upstream_429s": sum(u["rate_limited"] for u in upstream),
           "gateway_retried_requests": int(_metric_sum(metrics, "pitstop_retries_total")),
           "gateway_steered": int(_metric_sum(metrics, "pitstop_deployment_rate_limited_total")),
           "load_avg_1m": [round(load_before, 2), round(load_after, 2)]}
    print(f"{rate}/s gateway rpm={row['gateway_rpm']}: ok {row['success_rate']:.4f} ({row['ok']}/{row['sent']}), "
          f"upstream 429s {row['upstream_429s']}, served {row['upstream_served']}, latency p50 "
          f"{row['latency_ms']['p50']} p99 {row['latency_ms']['p99']} ms, load {row['load_avg_1m']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[2.25, 2.75],
                        help="requests a second (default: 1.5x and 1.83x one quota; 0.75x and 0.92x both)")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds a run")
    parser.add_argument("--quota-rpm", type=int, default=90, help="each provider's requests a minute")
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = [run_one(rate, limits, args) for rate in args.rates for limits in (False, True)]
    settings = {"rates_per_s": args.rates, "duration_s": args.duration, "quota_rpm": args.quota_rpm,
                "deployments": 2, "upstream_delay_ms": args.delay_ms, "seed": args.seed}
    return save_runs("bench.gateway_deployment_limits", argv, args.out, settings, rows)


if __name__ == "__main__":
    main()
