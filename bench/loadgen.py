"""Open-loop load generator for the gateway benchmark: one target URL, a fixed arrival rate, a fixed time.

    .venv/bin/python -m bench.loadgen --url http://127.0.0.1:9100/v1/chat/completions --rate 200 \
        --duration 8 [--stream] [--header 'Authorization: Bearer sk-x'] [--client aiohttp|httpx]

Prints one JSON object: sent/ok/errors, achieved rate, latency and TTFT percentiles (ms), and how late
the generator itself sent requests (`schedule_lag_ms`), so a CPU-starved generator shows up in the data.

Why open loop: arrivals are drawn up front (Poisson, fixed seed, so direct and gateway runs get the same
schedule) and never wait for earlier answers. Latency is measured from the *scheduled* send time, so
queueing anywhere (generator, client pool, gateway) counts instead of being hidden (no coordinated
omission). Every request is bounded by `--timeout`; the run by warm-up + duration + timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# First SSE event that carries a non-empty content delta: the first token the client sees.
TOKEN_RE = re.compile(rb'"content"\s*:\s*"[^"]')
DONE = b"[DONE]"


@dataclass
class LoadSpec:
    url: str
    rate: float
    duration_s: float = 8.0
    stream: bool = False
    model: str = "mock"
    prompt: str = "Say something short."
    headers: dict[str, str] = field(default_factory=dict)
    arrival: str = "poisson"  # or "uniform"
    seed: int = 1
    timeout_s: float = 5.0
    warmup_s: float = 1.0  # sent at the same rate, not recorded: warms connections and lazy code paths
    max_requests: int = 200_000
    max_connections: int = 2000
    client: str = "aiohttp"  # or "httpx" (its pool collapses near 500 rps here, see gateway_overhead)


@dataclass
class _Sample:
    lag: float = 0.0
    latency: float | None = None
    ttft: float | None = None
    error: str | None = None
    done_at: float = 0.0


def arrival_offsets(spec: LoadSpec) -> list[float]:
    """Send times (s from start) over warm-up + duration."""
    total = spec.warmup_s + spec.duration_s
    if spec.rate <= 0:
        return []
    if spec.arrival == "uniform":
        n = int(total * spec.rate)
        offsets = [i / spec.rate for i in range(n)]
    else:
        rng = random.Random(spec.seed)
        offsets, t = [], rng.expovariate(spec.rate)
        while t < total:
            offsets.append(t)
            t += rng.expovariate(spec.rate)
    if len(offsets) > spec.max_requests:
        raise ValueError(f"{len(offsets)} requests exceed --max-requests {spec.max_requests}")
    return offsets


def request_body(spec: LoadSpec) -> bytes:
    return json.dumps({
        "model": spec.model,
        "messages": [{"role": "user", "content": spec.prompt}],
        "max_tokens": 16,
        "stream": spec.stream,
    }).encode()


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of unsorted values (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _summary_ms(values: list[float]) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "p50": ms(percentile(values, 50)), "p90": ms(percentile(values, 90)),
        "p95": ms(percentile(values, 95)), "p99": ms(percentile(values, 99)), "max": ms(max(values) if values else None),
        "mean": ms(sum(values) / len(values) if values else None),
    }


class _HttpxClient:
    def __init__(self, spec: LoadSpec) -> None:
        import httpx

        self.httpx = httpx
        limits = httpx.Limits(max_connections=spec.max_connections, max_keepalive_connections=spec.max_connections)
        self.client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(spec.timeout_s))

    async def non_stream(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        r = await self.client.post(url, content=body, headers=headers)
        return r.status_code, r.content

    async def stream(self, url: str, body: bytes, headers: dict[str, str], on_chunk: Any) -> int:
        async with self.client.stream("POST", url, content=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code
            async for chunk in r.aiter_raw():
                on_chunk(chunk)
            return 200

    async def close(self) -> None:
        await self.client.aclose()


class _AiohttpClient:
    def __init__(self, spec: LoadSpec) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=spec.max_connections, limit_per_host=spec.max_connections)
        self.session = aiohttp.ClientSession(connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=spec.timeout_s))

    async def non_stream(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with self.session.post(url, data=body, headers=headers) as r:
            return r.status, await r.read()

    async def stream(self, url: str, body: bytes, headers: dict[str, str], on_chunk: Any) -> int:
        async with self.session.post(url, data=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                return r.status
            async for chunk in r.content.iter_any():
                on_chunk(chunk)
            return 200

    async def close(self) -> None:
        await self.session.close()


async def _one(client: Any, spec: LoadSpec, body: bytes, headers: dict[str, str], scheduled: float,
               sample: _Sample) -> None:
    clock = time.perf_counter
    sample.lag = clock() - scheduled
    try:
        async with asyncio.timeout(spec.timeout_s):
            if spec.stream:
                tail = b""

                def on_chunk(chunk: bytes) -> None:
                    nonlocal tail
                    if sample.ttft is None and TOKEN_RE.search(tail[-16:] + chunk):
                        sample.ttft = clock() - scheduled
                    tail = (tail + chunk)[-64:]

                status = await client.stream(spec.url, body, headers, on_chunk)
                if status != 200:
                    sample.error = f"status_{status}"
                elif DONE not in tail:
                    sample.error = "stream_without_done"
                elif sample.ttft is None:
                    sample.error = "stream_without_tokens"
            else:
                status, content = await client.non_stream(spec.url, body, headers)
                if status != 200:
                    sample.error = f"status_{status}"
                elif b'"choices"' not in content:
                    sample.error = "body_without_choices"
    except TimeoutError:
        sample.error = "timeout"
    except Exception as exc:  # connection resets, protocol errors: counted, never fatal
        sample.error = type(exc).__name__
    sample.done_at = clock()
    if sample.error is None:
        sample.latency = sample.done_at - scheduled


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run one load point and return its summary (see the module docstring)."""
    offsets = arrival_offsets(spec)
    body = request_body(spec)
    headers = {"content-type": "application/json", **spec.headers}
    client = _AiohttpClient(spec) if spec.client == "aiohttp" else _HttpxClient(spec)
    samples = [_Sample() for _ in offsets]
    tasks = []
    cpu0, clock = time.process_time(), time.perf_counter
    start = clock() + 0.05
    try:
        for offset, sample in zip(offsets, samples, strict=True):
            scheduled = start + offset
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, spec, body, headers, scheduled, sample)))
        if tasks:
            await asyncio.wait(tasks, timeout=spec.timeout_s + 5)
    finally:
        await client.close()
    wall = clock() - start
    cpu = time.process_time() - cpu0

    recorded = [(o, s) for o, s in zip(offsets, samples, strict=True) if o >= spec.warmup_s]
    ok = [s for _, s in recorded if s.error is None and s.latency is not None]
    errors: dict[str, int] = {}
    for _, s in recorded:
        if s.error is not None or s.latency is None:
            kind = s.error or "unfinished"
            errors[kind] = errors.get(kind, 0) + 1
    first_send = start + (recorded[0][0] if recorded else 0.0)
    span = max((s.done_at for s in ok), default=first_send) - first_send
    sent_span = (recorded[-1][0] - recorded[0][0]) if len(recorded) > 1 else 0.0
    return {
        "spec": {k: v for k, v in asdict(spec).items() if k != "headers"},
        "target_rps": spec.rate,
        "sent": len(recorded),
        "sent_total": len(offsets),  # warm-up included: what the target had to serve
        "ok_total": sum(1 for s in samples if s.error is None and s.latency is not None),
        "offered_rps": round(len(recorded) / spec.duration_s, 2) if spec.duration_s > 0 else 0.0,
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        # ok answers per second, from the first recorded send to the last ok answer: an overloaded
        # target pushes its answers out past the window and so reads lower than the target rate.
        "achieved_rps": round(len(ok) / span, 2) if span > 0 else 0.0,
        "sent_rps": round((len(recorded) - 1) / sent_span, 2) if sent_span > 0 else 0.0,
        "latency_ms": _summary_ms([s.latency for s in ok if s.latency is not None]),
        "ttft_ms": _summary_ms([s.ttft for s in ok if s.ttft is not None]) if spec.stream else None,
        "schedule_lag_ms": _summary_ms([s.lag for _, s in recorded]),
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_cpu_share": round(cpu / wall, 3) if wall > 0 else None,
        "wall_s": round(wall, 3),
    }


def _run(coro: Any) -> Any:
    try:
        import uvloop  # the same fast loop the servers use; plain asyncio otherwise

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="open-loop load generator (prints a JSON summary)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="arrivals per second")
    parser.add_argument("--duration", type=float, default=8.0, help="recorded seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first, same rate")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--model", default="mock")
    parser.add_argument("--prompt", default=LoadSpec.prompt, help="the user message every request sends")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--arrival", choices=["poisson", "uniform"], default="poisson")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--max-connections", type=int, default=2000)
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    spec = LoadSpec(url=args.url, rate=args.rate, duration_s=args.duration, stream=args.stream,
                    model=args.model, prompt=args.prompt, headers={k.strip(): v.strip() for k, v in headers.items()},
                    arrival=args.arrival, seed=args.seed, timeout_s=args.timeout, warmup_s=args.warmup,
                    max_requests=args.max_requests, max_connections=args.max_connections, client=args.client)
    json.dump(_run(run_load(spec)), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
