"""What the gateway adds to an embeddings request, by batch size and encoding: a mock embeddings server
(bench/mock_upstream.py, 1536-dimension vectors, `--delay-ms` before each answer) asked directly and
through `pitstop serve` (the direct HTTP transport), one request at a time, the two interleaved; the
gateway's CPU a request (its process tree, /proc) and the longest `/healthz` round trip meanwhile,
which is how long every other request on that gateway waited.

    .venv/bin/python -m bench.gateway_embeddings [--batches 1,16,256,2048] [--requests 12] [--delay-ms 20]

`base64` is what the openai SDKs ask for unless told otherwise; `float` is what a plain HTTP client
gets. Writes bench/results/gateway_embeddings.json."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import Service, healthz_lags, mock_upstream, pitstop_serve

OUT = RESULTS / "gateway_embeddings.json"
TEXT = "a sentence of eight words to embed here"


def _config(mock_url: str, work: Path) -> Path:
    config = {"model_list": [{"model_name": "embed",
                              "litellm_params": {"model": "hosted_vllm/mock-embed", "api_base": f"{mock_url}/v1"},
                              "model_info": {"mode": "embedding", "input_cost_per_token": 1e-8}}],
              "storage": {"url": f"sqlite:///{work / 'outcomes.db'}", "spool_path": str(work / 'spool.jsonl')},
              "ranking": {"enabled": False}}
    path = work / "pitstop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _point(mock_url: str, gateway_url: str, gateway: Service, batch: int, encoding: str,
                 requests: int) -> dict:
    body = {"input": [TEXT] * batch, "encoding_format": encoding}
    async with httpx.AsyncClient(timeout=300) as client:
        async def timed(url: str, model: str) -> tuple[float, int]:
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/embeddings", json={**body, "model": model})
            response.raise_for_status()
            return time.perf_counter() - started, len(response.content)

        for _ in range(2):  # warm: connections, the mock's rendered body
            await timed(mock_url, "mock-embed")
            await timed(gateway_url, "embed")
        direct, through, cpu = [], [], 0.0
        size = 0
        async with healthz_lags(gateway_url) as lags:
            for _ in range(requests):
                direct.append((await timed(mock_url, "mock-embed"))[0])
                cpu_before = gateway.cpu_seconds()
                seconds, size = await timed(gateway_url, "embed")
                cpu += gateway.cpu_seconds() - cpu_before
                through.append(seconds)
    return {"batch": batch, "encoding": encoding, "response_bytes": size, "requests": requests,
            "direct_median_ms": statistics.median(direct) * 1000, "direct_p90_ms": pct(direct, 90) * 1000,
            "gateway_median_ms": statistics.median(through) * 1000, "gateway_p90_ms": pct(through, 90) * 1000,
            "added_median_ms": (statistics.median(through) - statistics.median(direct)) * 1000,
            "gateway_cpu_ms_per_request": cpu / requests * 1000,
            "healthz_max_ms": max(lags) * 1000 if lags else None, "healthz_requests": len(lags)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16,256,2048")
    parser.add_argument("--encodings", default="base64,float")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pitstop-bench-embeddings-"))
    mock, mock_url = mock_upstream(work, "--delay-ms", str(args.delay_ms))
    gateway, gateway_url = pitstop_serve(_config(mock_url, work), work / "gateway.log")
    mock.start()
    try:
        gateway.start(timeout_s=300)
        points = [asyncio.run(_point(mock_url, gateway_url, gateway, int(batch), encoding, args.requests))
                  for encoding in args.encodings.split(",") for batch in args.batches.split(",")]
    finally:
        gateway.stop()
        mock.stop()
    for p in points:
        print(f"{p['encoding']:7s} x{p['batch']:<5d} {p['response_bytes'] / 1e6:7.2f} MB: direct {p['direct_median_ms']:7.1f} "
              f"ms, gateway {p['gateway_median_ms']:7.1f} ms (+{p['added_median_ms']:.1f}), gateway CPU "
              f"{p['gateway_cpu_ms_per_request']:.1f} ms a request, /healthz waited up to {p['healthz_max_ms']:.0f} ms",
              flush=True)
    write_report(args.out, {"command": command("bench.gateway_embeddings", argv), "machine": machine_info(),
                            "delay_ms": args.delay_ms, "points": points})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
