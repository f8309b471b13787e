"""What the MCP gateway (/mcp, gateway/mcp_gateway.py) adds to a tool call: a real `mcp` Client calls the tests'
MCP server (the `mcp` package's MCPServer, Streamable HTTP, stateless, on a local socket) directly, and the
same tool through an in-process gateway (uvicorn on a local socket, an API key checked, the call forwarded
over the gateway's kept upstream connection and logged as an outcome row), each client on a connection it
keeps open. Modes, interleaved one call at a time:

- `direct`: the server's `forecast`, called on the server;
- `gateway /mcp`: `weather__forecast` on the aggregated endpoint;
- `gateway /mcp/weather`: `forecast` on the server's own endpoint;
- `list direct` / `list gateway /mcp`: tools/list.

Then throughput: `--concurrency` clients each calling in a loop for `--burst-s`, directly and through the
gateway, in calls a second. Everything (server, gateway, clients) shares this process and its GIL on a
shared, loaded 2-core VM: the gateway's added latency is an upper bound.

    .venv/bin/python -m bench.mcp_gateway [--rounds 200] [--concurrency 8] [--burst-s 5]

Writes bench/results/mcp_gateway.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import RESULTS, command, machine_info, pct, write_report

OUT = RESULTS / "mcp_gateway.json"
MASTER = "sk-bench-master"


async def _burst(calls: list[Callable[[], Awaitable[Any]]], seconds: float) -> float:
    """Calls a second, each client calling in a loop for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(call: Callable[[], Awaitable[Any]]) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in calls))
    return done / (time.perf_counter() - started)


async def _run(args: argparse.Namespace, server_url: str, gateway_url: str, key: str) -> dict:
    from contextlib import AsyncExitStack

    from tests.gateway.mcp_gateway_helpers import mcp_client

    async with AsyncExitStack() as stack:
        direct = await stack.enter_async_context(mcp_client(server_url))
        through = await stack.enter_async_context(mcp_client(gateway_url + "/mcp", key))
        alone = await stack.enter_async_context(mcp_client(gateway_url + "/mcp/weather", key))
        modes: dict[str, Callable[[], Awaitable[Any]]] = {
            "direct": lambda: direct.call_tool("forecast", {"city": "Oslo"}),
            "gateway /mcp": lambda: through.call_tool("weather__forecast", {"city": "Oslo"}),
            "gateway /mcp/weather": lambda: alone.call_tool("forecast", {"city": "Oslo"}),
            "list direct": direct.list_tools,
            "list gateway /mcp": through.list_tools}
        for call in modes.values():  # connections, listings the clients keep, the gateway's upstream connection
            await call()
        answers = [await modes[m]() for m in ("direct", "gateway /mcp", "gateway /mcp/weather")]
        assert all(a.content == answers[0].content and not a.is_error for a in answers), answers
        ms: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.rounds):
            for mode, call in modes.items():
                started = time.perf_counter()
                await call()
                ms[mode].append((time.perf_counter() - started) * 1000)
        latency = {mode: {"median_ms": statistics.median(v), "p90_ms": pct(v, 90)} for mode, v in ms.items()}
        added = [g - d for g, d in zip(ms["gateway /mcp"], ms["direct"], strict=True)]
        throughput = {}
        for mode in ("direct", "gateway /mcp"):
            clients = [await stack.enter_async_context(
                mcp_client(server_url) if mode == "direct" else mcp_client(gateway_url + "/mcp", key))
                for _ in range(args.concurrency)]
            name = "forecast" if mode == "direct" else "weather__forecast"
            throughput[mode] = await _burst(
                [lambda c=c, n=name: c.call_tool(n, {"city": "Oslo"}) for c in clients], args.burst_s)  # type: ignore[misc]
    return {"latency": latency, "gateway_added_median_ms": statistics.median(added),
            "gateway_over_direct_median": latency["gateway /mcp"]["median_ms"] / latency["direct"]["median_ms"],
            "calls_per_s": throughput,
            "gateway_over_direct_calls_per_s": throughput["gateway /mcp"] / throughput["direct"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--burst-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the MCP server's and clients' request logs, in this process
    from tests.gateway.harness import gateway_config, model_entry, running_gateway
    from tests.gateway.mcp_server import mcp_server

    with tempfile.TemporaryDirectory() as work, mcp_server() as spy:
        raw = gateway_config(Path(work), [model_entry("m", "http://127.0.0.1:9/v1")], ranking={"enabled": False},
                             auth={"require_keys": True, "master_key": MASTER},
                             mcp_servers=[{"name": "weather", "url": spy.url}])
        with running_gateway(raw) as gateway:
            made = httpx.post(gateway.url + "/v1/keys", json={"name": "bench"},
                              headers={"Authorization": f"Bearer {MASTER}"})
            made.raise_for_status()
            results = asyncio.run(_run(args, spy.url, gateway.url, made.json()["secret"]))
    print(json.dumps(results, indent=2))
    report = {"command": command("bench.mcp_gateway", argv), "machine": machine_info(), "rounds": args.rounds,
              "concurrency": args.concurrency, "burst_s": args.burst_s, **results}
    write_report(OUT, report)


if __name__ == "__main__":
    main()
