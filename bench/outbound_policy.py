"""What the outbound URL policy (gateway/outbound_policy.py, gateway/outbound_transport.py) costs a connection:
an httpx client GETs a local HTTP server (aiohttp, in another process) on a new connection each request,
with the gateway's guarded transport (the host resolved, each address classed, the connection made to the
checked address) and with a plain one, side by side, interleaved in rounds; for `127.0.0.1` (a literal: no
lookup) and `localhost` (a lookup, from /etc/hosts). Also the check alone (`OutboundPolicy.addresses`),
and requests on a kept connection (no new connection: nothing checked).

    .venv/bin/python -m bench.outbound_policy      # ~30 s; bench/results/outbound_policy.json
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
from aiohttp import web

from bench.common import RESULTS, command, machine_info, pct, write_report
from bench.procs import module_server
from gateway.outbound_policy import OutboundPolicy
from gateway.outbound_transport import guarded_httpx

POLICY = OutboundPolicy()  # the default: loopback allowed, so the requests go through (and are checked)


def server_main(port: int) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def _client(guarded: bool, kept: bool) -> httpx.AsyncClient:
    limits = httpx.Limits(max_keepalive_connections=10 if kept else 0)  # 0: a new connection every request
    transport = (guarded_httpx(lambda: POLICY, limits=limits) if guarded
                 else httpx.AsyncHTTPTransport(trust_env=False, limits=limits))
    return httpx.AsyncClient(transport=transport)


async def _timed_requests(client: httpx.AsyncClient, url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        answer = await client.get(url)
        times.append(time.perf_counter() - start)
        assert answer.text == "ok"
    return times


async def _timed_checks(host: str, port: int, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await POLICY.addresses(host, port)
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict[str, Any]:
    return {"n": len(times), "median_ms": pct(times, 50) * 1e3, "p90_ms": pct(times, 90) * 1e3}


async def measure(port: int, requests: int, rounds: int) -> dict[str, Any]:
    variants = [(host, guarded, kept) for host in ("127.0.0.1", "localhost") for kept in (False, True)
                for guarded in (False, True)]
    times: dict[str, list[float]] = {}
    checks: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved: a noisy neighbour slows every variant alike
        for host, guarded, kept in variants:
            name = f"{host}, {'guarded' if guarded else 'plain'}, {'kept connection' if kept else 'new connection'}"
            async with _client(guarded, kept) as client:
                await client.get(f"http://{host}:{port}/")  # warm: a kept connection is open before timing
                times.setdefault(name, []).extend(await _timed_requests(client, f"http://{host}:{port}/", requests))
        for host in ("127.0.0.1", "localhost"):
            checks.setdefault(host, []).extend(await _timed_checks(host, port, requests))
    report: dict[str, Any] = {"requests": {name: _summary(t) for name, t in times.items()},
                              "check_alone": {host: _summary(t) for host, t in checks.items()}, "overhead_ms": {}}
    for host in ("127.0.0.1", "localhost"):
        for kept in ("new connection", "kept connection"):
            plain = report["requests"][f"{host}, plain, {kept}"]["median_ms"]
            guarded = report["requests"][f"{host}, guarded, {kept}"]["median_ms"]
            report["overhead_ms"][f"{host}, {kept}"] = guarded - plain
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "outbound_policy.json"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args(argv)
    if args.serve:
        return server_main(args.serve)
    with module_server("bench.outbound_policy", "/") as port:
        results = asyncio.run(measure(port, args.requests, args.rounds))
    report = {"command": command("bench.outbound_policy", argv), "machine": machine_info(),
              "settings": {"requests": args.requests, "rounds": args.rounds, "policy": "default (allow_private)"},
              **results}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    for name, overhead in report["overhead_ms"].items():
        print(f"{name}: {overhead:+.3f} ms a request")


if __name__ == "__main__":
    main()
