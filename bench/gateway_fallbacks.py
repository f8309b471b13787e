"""What fallback models (gateway/fallbacks.py) do for clients when a model's upstream fails: the share of
requests answered and their latency, with and without a fallback chain, side by side.

    .venv/bin/python -m bench.gateway_fallbacks [--rate 20] [--duration 25] [--delay-ms 20]

Two mock upstreams (bench/mock_upstream.py, answering after `--delay-ms`): `primary` with faults, and a
healthy `secondary`. Requests name `primary`; the gateway either has no fallback or
`fallbacks: {on_error: {primary: [secondary]}}` (defaults otherwise: 2 retries, a deployment cooling down
for `--cooldown-s` after 3 failures in a row). Scenarios, each with fresh processes:
  flaky    primary fails 20% of requests at random with a 503
  outage   primary fails every request from 8 to 18 s after its first one
Open-loop Poisson arrivals (bench/loadgen.py, the same schedule for both), non-streaming. Writes
bench/results/gateway_fallbacks.json."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import save_runs
from bench.loadgen import LoadSpec, run_load
from bench.procs import ROOT, Service, free_port, mock_upstream

OUT = ROOT / "bench" / "results" / "gateway_fallbacks.json"
SCENARIOS = {"flaky": ["--fail-rate", "0.2"], "outage": ["--outage", "8", "18"]}
_FALLBACKS = re.compile(r'^pitstop_fallbacks_total\{[^}]*\} ([0-9.e+]+)$', re.M)


def write_config(path: Path, primary: str, secondary: str, port: int, cooldown_s: float, fallbacks: bool) -> None:
    models = [{"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": f"{base}/v1"},
               "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}
              for name, base in (("primary", primary), ("secondary", secondary))]
    config: dict[str, Any] = {
        "model_list": models, "ranking": {"enabled": False},
        "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / "spool.jsonl")},
        "server": {"host": "127.0.0.1", "port": port, "cooldown_s": cooldown_s}}
    if fallbacks:
        config["fallbacks"] = {"on_error": {"primary": ["secondary"]}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_one(scenario: str, fallbacks: bool, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="pitstop-fallbacks-") as tmp:
        work = Path(tmp)
        primary, primary_url = mock_upstream(work / "primary", "--delay-ms", str(args.delay_ms), *SCENARIOS[scenario])
        secondary, secondary_url = mock_upstream(work / "secondary", "--delay-ms", str(args.delay_ms))
        port = free_port()
        write_config(work / "pitstop.yaml", primary_url, secondary_url, port, args.cooldown_s, fallbacks)
        gateway = Service("pitstop", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(work / "pitstop.yaml"),
                                      "--port", str(port), "--log-level", "warning"],
                          f"http://127.0.0.1:{port}/readyz", work / "pitstop.log", cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        services = [primary, secondary, gateway]
        try:
            for service in services:
                service.start()
            spec = LoadSpec(url=f"http://127.0.0.1:{port}/v1/chat/completions", rate=args.rate,
                            duration_s=args.duration, model="primary", seed=args.seed, timeout_s=10.0, warmup_s=0.0)
            result = asyncio.run(run_load(spec))
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            for service in reversed(services):
                service.stop()
    fell_back = sum(float(v) for v in _FALLBACKS.findall(metrics))
    row = {"scenario": scenario, "fallbacks": fallbacks, "sent": result["sent"], "ok": result["ok"],
           "answered_share": round(result["ok"] / result["sent"], 4) if result["sent"] else None,
           "error_kinds": result["error_kinds"], "fell_back": int(fell_back),
           "latency_ms": result["latency_ms"], "schedule_lag_ms_p99": result["schedule_lag_ms"]["p99"]}
    print(f"{scenario:7s} fallbacks={str(fallbacks):5s} answered {row['answered_share']:.4f} "
          f"({row['ok']}/{row['sent']}), fell back {row['fell_back']}, latency p50 {row['latency_ms']['p50']} "
          f"p99 {row['latency_ms']['p99']} ms", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds a run")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--cooldown-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = [run_one(scenario, fallbacks, args) for scenario in SCENARIOS for fallbacks in (False, True)]
    settings = {"rate_per_s": args.rate, "duration_s": args.duration, "upstream_delay_ms": args.delay_ms,
                "cooldown_s": args.cooldown_s, "scenarios": SCENARIOS}
    return save_runs("bench.gateway_fallbacks", argv, args.out, settings, rows)


if __name__ == "__main__":
    main()
