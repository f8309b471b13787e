"""What OpenTelemetry tracing (`tracing:`, gateway/tracing.py) costs the gateway: latency, CPU and throughput
with spans on and off, side by side in one run.

    .venv/bin/python -m bench.tracing [--rate 100] [--duration 10] [--rounds 3] [--burst-s 6] [--concurrency 32]

One mock upstream (bench/mock_upstream.py: 20 ms, then a stream of 10 chunks 5 ms apart), and two gateways on
it, started once and alike but for `tracing:` on one, which exports every span to a local OTLP/HTTP collector
(`python -m bench.tracing --collector`: a process that decodes each export and counts its spans, so the spans
are known to have been made, sent and received). Per round, per mode (whole, stream), off then on:
  - an open-loop Poisson load at `--rate` (bench/loadgen.py, the same schedule each time): p50 / p99 latency,
    and the gateway's CPU per request;
  - a closed loop with `--concurrency` requests in flight for `--burst-s`: the throughput the gateway
    sustains when it is the bottleneck (on a 2-core machine the mock and the load share its cores).
Ratios are on / off, medians over the rounds. Writes bench/results/tracing.json."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from bench.common import command, machine_info, write_report
from bench.loadgen import LoadSpec, percentile, request_body, run_load
from bench.procs import ROOT, Service, free_port, mock_upstream, pitstop_serve

OUT = ROOT / "bench" / "results" / "tracing.json"
MODES = {"whole": False, "stream": True}


def write_config(work: Path, mock_url: str, collector: str | None) -> Path:
    config: dict[str, Any] = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "hosted_vllm/mock", "api_base": f"{mock_url}/v1"},
                        "model_info": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}],
        "storage": {"url": f"sqlite:///{work / 'pitstop.db'}", "spool_path": str(work / "spool.jsonl")},
        "ranking": {"enabled": False}}
    if collector is not None:
        config["tracing"] = {"otlp_endpoint": collector, "service_name": "bench-gateway"}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def saturate(url: str, stream: bool, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`concurrency` clients, each sending its next request as soon as its last is answered."""
    body = request_body(LoadSpec(url=url, rate=0, stream=stream, model="m"))
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < deadline:
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                    answer = await response.read()
                    ok = response.status == 200 and (b"[DONE]" in answer if stream else b'"choices"' in answer)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = [1000 * x for x in latencies]
    return {"ok": len(latencies), "errors": errors, "rps": round(len(latencies) / wall, 2),
            "latency_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}}


def measure(gateway: Service, url: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    chat = f"{url}/v1/chat/completions"
    cpu0 = gateway.cpu_seconds()
    load = asyncio.run(run_load(LoadSpec(url=chat, rate=args.rate, duration_s=args.duration, stream=MODES[mode],
                                         model="m", seed=args.seed, warmup_s=args.warmup, timeout_s=10.0)))
    cpu = gateway.cpu_seconds() - cpu0
    burst = asyncio.run(saturate(chat, MODES[mode], args.concurrency, args.burst_s))
    return {"latency_ms": load["latency_ms"], "ttft_ms": load["ttft_ms"], "sent": load["sent"], "ok": load["ok"],
            "errors": load["errors"], "achieved_rps": load["achieved_rps"],
            "gateway_cpu_ms_per_request": round(1000 * cpu / max(load["sent_total"], 1), 3), "saturated": burst}


def _ratio(on: float | None, off: float | None) -> float | None:
    return None if on is None or not off else round(on / off, 3)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode, on / off: median over rounds of each round's ratio (each round's pair ran back to back)."""
    out: dict[str, Any] = {}
    for mode in MODES:
        pairs = [(off, on) for off in runs if off["mode"] == mode and not off["tracing"]
                 for on in runs if on["mode"] == mode and on["tracing"] and on["round"] == off["round"]]

        def median(values: list[float | None]) -> float | None:
            kept = [v for v in values if v is not None]
            return round(statistics.median(kept), 3) if kept else None

        out[mode] = {
            "p50_ratio": median([_ratio(on["latency_ms"]["p50"], off["latency_ms"]["p50"]) for off, on in pairs]),
            "p99_ratio": median([_ratio(on["latency_ms"]["p99"], off["latency_ms"]["p99"]) for off, on in pairs]),
            "p50_added_ms": median([on["latency_ms"]["p50"] - off["latency_ms"]["p50"] for off, on in pairs]),
            "p99_added_ms": median([on["latency_ms"]["p99"] - off["latency_ms"]["p99"] for off, on in pairs]),
            "cpu_per_request_ratio": median([_ratio(on["gateway_cpu_ms_per_request"], off["gateway_cpu_ms_per_request"])
                                             for off, on in pairs]),
            "throughput_ratio": median([_ratio(on["saturated"]["rps"], off["saturated"]["rps"]) for off, on in pairs]),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pitstop-tracing-") as tmp:
        work = Path(tmp)
        mock, mock_url = mock_upstream(work / "mock", "--delay-ms", str(args.delay_ms), "--chunks", "10",
                                       "--chunk-interval-ms", "5")
        port = free_port()
        collector = Service("collector", [sys.executable, "-m", "bench.tracing", "--collector", "--port", str(port)],
                            f"http://127.0.0.1:{port}/health", work / "collector.log", cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT)})
        off, off_url = pitstop_serve(write_config(work / "off", mock_url, None), work / "off.log")
        on, on_url = pitstop_serve(write_config(work / "on", mock_url, f"http://127.0.0.1:{port}/v1/traces"),
                                   work / "on.log")
        services = [mock, collector, off, on]
        runs: list[dict[str, Any]] = []
        try:
            with ThreadPoolExecutor(len(services)) as starting:  # in parallel: each waits mostly on its imports
                list(starting.map(Service.start, services))
            for url in (off_url, on_url):  # lazy imports, first connections: not recorded
                for stream in MODES.values():
                    asyncio.run(run_load(LoadSpec(url=f"{url}/v1/chat/completions", rate=20, duration_s=args.warmup,
                                                  stream=stream, model="m", warmup_s=0.0)))
            for round_ in range(1, args.rounds + 1):
                for mode in MODES:
                    for tracing, gateway, url in ((False, off, off_url), (True, on, on_url)):
                        row = {"round": round_, "mode": mode, "tracing": tracing, **measure(gateway, url, mode, args)}
                        runs.append(row)
                        print(f"round {round_} {mode:6s} tracing {'on ' if tracing else 'off'}  p50 "
                              f"{row['latency_ms']['p50']} p99 {row['latency_ms']['p99']} ms  cpu/req "
                              f"{row['gateway_cpu_ms_per_request']} ms  saturated {row['saturated']['rps']}/s  "
                              f"errors {row['errors'] + row['saturated']['errors']}", flush=True)
            on.stop()  # its shutdown exports the spans still batched
            received = httpx.get(f"http://127.0.0.1:{port}/count", timeout=10).json()
        finally:
            for service in reversed(services):
                service.stop()
    traced = sum(r["sent"] + r["saturated"]["ok"] for r in runs if r["tracing"])
    return {"runs": runs, "summary": summary(runs),
            "collector": {**received, "traced_requests_measured": traced}}


def collector_app() -> Any:
    """A local OTLP/HTTP collector: decodes each export, counts its spans (`GET /count`)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    counts = {"exports": 0, "spans": 0}
    answer = ExportTraceServiceResponse().SerializeToString()

    async def traces(request: Request) -> Response:
        exported = ExportTraceServiceRequest.FromString(await request.body())
        counts["exports"] += 1
        counts["spans"] += sum(len(s.spans) for r in exported.resource_spans for s in r.scope_spans)
        return Response(answer, media_type="application/x-protobuf")

    async def count(request: Request) -> Response:
        return JSONResponse(counts)

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/count", count),
                             Route("/health", count)])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests a second, open loop")
    parser.add_argument("--duration", type=float, default=10.0, help="recorded seconds a point")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst-s", type=float, default=6.0, help="seconds of the closed loop")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight in the closed loop")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the mock's time to its answer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)  # this file's collector process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collector:
        import uvicorn

        uvicorn.run(collector_app(), host="127.0.0.1", port=args.port, log_level="warning")
        return None
    measured = run(args)
    report = {"command": command("bench.tracing", argv), "machine": machine_info(),
              "settings": {"rate_per_s": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
                           "rounds": args.rounds, "burst_s": args.burst_s, "concurrency": args.concurrency,
                           "upstream_delay_ms": args.delay_ms, "stream": "10 chunks 5 ms apart",
                           "spans_per_request": "whole: request, route, attempt; stream: + time_to_first_token"},
              **measured}
    write_report(args.out, report)
    print(f"summary (on / off): {report['summary']}\ncollector: {report['collector']}\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
