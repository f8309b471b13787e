"""What active health checks (gateway/health_checks.py) do for clients when one of a model's deployments
hangs: latency, retries and the hung deployment's share, with and without the checks, the same schedule.

    .venv/bin/python -m bench.gateway_health_checks [--rate 20] [--duration 40] [--hang 5 30]

Two mock upstreams (bench/mock_upstream.py, answering after `--delay-ms`) serve one model through
`pitstop serve`, the one to hang listed first (where no request is in flight, least outstanding requests
sends the next to the first listed). From `--hang FROM TO` seconds into the load that one is frozen (SIGSTOP: its port still takes connections, nothing is answered, as a
process stuck in a GC pause, a deadlock or a hung GPU), then thawed (SIGCONT). The gateway's defaults
otherwise: 2 retries, a deployment cooling down for 30 s after 3 failures in a row, here a request timeout of
`--request-timeout-s` (600 s, its default). Variants: no health checks (the cooldown alone), and
`health_checks:` at the intervals given, each with the requests in flight on the frozen deployment when its
probes take it out left waiting (`rescue_in_flight: false`) and sent elsewhere (gateway/health_rescue.py). Scenarios (`hosted_vllm/` entries, sent directly): `balanced`, the model's two deployments,
each request to the one with the fewest in flight; `fallback`, the model's one deployment hangs and
`fallbacks: {on_error: {m: [backup]}}` names another model, served by the other mock. Open-loop Poisson arrivals (bench/loadgen.py), non-streaming. Writes
bench/results/gateway_health_checks.json."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import save_runs
from bench.loadgen import LoadSpec, run_load
from bench.procs import ROOT, Service, mock_upstream, pitstop_serve

OUT = ROOT / "bench" / "results" / "gateway_health_checks.json"
_RETRIES = re.compile(r'^pitstop_retries_total\{model="m"\} ([0-9.e+]+)$', re.M)
_RESCUES = re.compile(r'^pitstop_health_rescues_total\{model="m",outcome="([^"]+)"\} ([0-9.e+]+)$', re.M)
_PROBES = re.compile(r'^pitstop_health_checks_total\{deployment="([^"]+)",outcome="([^"]+)"\} ([0-9.e+]+)$', re.M)


def write_config(path: Path, scenario: str, hung: str, healthy: str, request_timeout_s: float,
                 checks: dict | None) -> None:
    second = "backup" if scenario == "fallback" else "m"
    config: dict[str, Any] = {
        "model_list": [{"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": f"{base}/v1"},
                        "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}
                       for name, base in (("m", hung), (second, healthy))],
        "ranking": {"enabled": False},
        "storage": {"url": f"sqlite:///{path.parent / 'pitstop.db'}", "spool_path": str(path.parent / "spool.jsonl")},
        "server": {"request_timeout_s": request_timeout_s}}
    if scenario == "fallback":
        config["fallbacks"] = {"on_error": {"m": ["backup"]}}
    if checks is not None:
        config["health_checks"] = checks
    path.write_text(yaml.safe_dump(config, sort_keys=False))


async def _load_while_hung(spec: LoadSpec, hung: Service, hang: tuple[float, float]) -> dict:
    async def freeze_and_thaw() -> None:
        await asyncio.sleep(hang[0])
        os.kill(hung.pid, signal.SIGSTOP)
        await asyncio.sleep(hang[1] - hang[0])
        os.kill(hung.pid, signal.SIGCONT)

    switch = asyncio.create_task(freeze_and_thaw())
    try:
        return await run_load(spec)
    finally:
        switch.cancel()
        os.kill(hung.pid, signal.SIGCONT)  # never left frozen


def mock_requests(base: str) -> int:
    return int(httpx.get(f"{base}/stats", timeout=10).json()["served"])


def run_one(scenario: str, name: str, checks: dict | None, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="pitstop-health-") as tmp:
        work = Path(tmp)
        (work / "a").mkdir()
        (work / "b").mkdir()
        hung, hung_url = mock_upstream(work / "b", "--delay-ms", str(args.delay_ms))
        healthy, healthy_url = mock_upstream(work / "a", "--delay-ms", str(args.delay_ms))
        write_config(work / "pitstop.yaml", scenario, hung_url, healthy_url, args.request_timeout_s, checks)
        gateway, url = pitstop_serve(work / "pitstop.yaml", work / "pitstop.log")
        services = [healthy, hung, gateway]
        try:
            for service in services:
                service.start()
            spec = LoadSpec(url=f"{url}/v1/chat/completions", rate=args.rate, duration_s=args.duration, model="m",
                            seed=args.seed, timeout_s=args.request_timeout_s * 3 + 5, warmup_s=0.0)
            before = {"hung": mock_requests(hung_url), "other": mock_requests(healthy_url)}
            result = asyncio.run(_load_while_hung(spec, hung, (args.hang[0], args.hang[1])))
            served = {"hung": mock_requests(hung_url) - before["hung"], "other": mock_requests(healthy_url) - before["other"]}
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
        finally:
            for service in reversed(services):
                service.stop()
    retries = sum(float(v) for v in _RETRIES.findall(metrics))
    probes = {f"{d} {o}": int(float(v)) for d, o, v in _PROBES.findall(metrics)}
    rescues = {o: int(float(v)) for o, v in _RESCUES.findall(metrics)}
    row = {"scenario": scenario, "variant": name, "health_checks": checks, "sent": result["sent"], "ok": result["ok"],
           "error_kinds": result["error_kinds"], "retried": int(retries), "upstream_requests": served, "probes": probes,
           "rescues": rescues,
           "latency_ms": result["latency_ms"], "schedule_lag_ms_p99": result["schedule_lag_ms"]["p99"]}
    lat = row["latency_ms"]
    print(f"{scenario:8s} {name:18s} answered {row['ok']}/{row['sent']}, retried {row['retried']}, served by the hung one / "
          f"the other {served['hung']}/{served['other']}, latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} mean {lat['mean']} ms, probes {probes}, rescues {rescues}",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds a run")
    parser.add_argument("--hang", type=float, nargs=2, default=(5.0, 30.0), metavar=("FROM_S", "TO_S"))
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--request-timeout-s", type=float, default=600.0,
                        help="server.request_timeout_s (the gateway's default)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    # Each with the requests in flight on a deployment taken out left waiting (rescue_in_flight: false) and
    # sent elsewhere (the default, gateway/health_rescue.py), one after the other.
    variants: dict[str, dict | None] = {
        "cooldown alone": None,
        "checks, defaults, no rescue": {"rescue_in_flight": False},
        "checks, defaults": {},  # every 5 s, 2 s timeout, out after 2 failures, back after 1 pass
        "checks, every 1 s, no rescue": {"interval_s": 1.0, "timeout_s": 0.5, "rescue_in_flight": False},
        "checks, every 1 s": {"interval_s": 1.0, "timeout_s": 0.5}}
    rows = [run_one(scenario, name, checks, args) for scenario in ("balanced", "fallback")
            for name, checks in variants.items()]
    settings = {"rate_per_s": args.rate, "duration_s": args.duration, "hang_s": list(args.hang),
                "upstream_delay_ms": args.delay_ms, "request_timeout_s": args.request_timeout_s}
    return save_runs("bench.gateway_health_checks", argv, args.out, settings, rows)


if __name__ == "__main__":
    main()
