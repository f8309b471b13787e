"""What remote MCP tools on the Responses API (gateway/mcp_loop.py) cost a turn: an in-process gateway in
front of the tests' mock upstream (answering at once) and the tests' MCP server (the `mcp` package,
Streamable HTTP, on a local socket), one request at a time, the modes interleaved:

- `plain`: a turn without tools (one model call);
- `listed`: the same turn offering the MCP server's tools, listed for it (the model calls none);
- `listed earlier`: the same, continuing a stored response that holds the listing (no listing);
- `one call`: a turn whose model calls one tool: listed, the call made, the model called again;
- `one call, TLS context each`: the same, each MCP connection building its own TLS context (loading
  the CA bundle) as an httpx client does by default, which the gateway no longer does;
- `direct call`: one tool call made by the `mcp` client itself, as the gateway makes it (a connection
  of its own), for scale.

    .venv/bin/python -m bench.mcp_tools [--rounds 100]

Writes bench/results/mcp_tools.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.common import RESULTS, command, machine_info, pct, write_report

OUT = RESULTS / "mcp_tools.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the MCP server's and clients' request logs, in this process
    from gateway import mcp_client
    from gateway.mcp_client import call_tool
    from gateway.mcp_tools import mcp_servers_of
    from tests.gateway.harness import gateway_config, model_entry, running_gateway
    from tests.gateway.mcp_server import mcp_server
    from tests.gateway.upstream import UpstreamProcess

    ms: dict[str, list[float]] = defaultdict(list)
    upstream = UpstreamProcess("a")
    try:
        with tempfile.TemporaryDirectory() as work, mcp_server() as spy:
            tool = {"type": "mcp", "server_label": "weather", "server_url": spy.url, "require_approval": "never"}
            server = mcp_servers_of({"tools": [tool]})[0]
            raw = gateway_config(Path(work), [model_entry("up", upstream.api_base)], ranking={"enabled": False})
            with running_gateway(raw) as gateway, gateway.openai() as client:
                listed = client.responses.create(model="up", input="[tools:0] hi", tools=[tool])  # type: ignore[list-item]

                def timed(mode: str, **request: object) -> None:
                    started = time.perf_counter()
                    response = client.responses.create(model="up", **request)  # type: ignore[call-overload]
                    ms[mode].append((time.perf_counter() - started) * 1000)
                    assert response.output[-1].type == "message", response.output

                for _ in range(args.rounds):
                    timed("plain", input="[tools:0] hi")
                    timed("listed", input="[tools:0] hi", tools=[tool])
                    timed("listed earlier", input="[tools:0] hi", tools=[tool], previous_response_id=listed.id)
                    timed("one call", input="[tools:1] Oslo", tools=[tool])
                    shared = mcp_client._tls
                    mcp_client._tls = ssl.create_default_context  # type: ignore[assignment]
                    try:
                        timed("one call, TLS context each", input="[tools:1] Oslo", tools=[tool])
                    finally:
                        mcp_client._tls = shared
                    started = time.perf_counter()
                    result = asyncio.run(call_tool(server, "forecast", {"city": "Oslo"}))
                    ms["direct call"].append((time.perf_counter() - started) * 1000)
                    assert result.output == "sunny in Oslo", result
            methods = dict(spy.methods)
    finally:
        upstream.close()

    summary = {mode: {"median_ms": statistics.median(v), "p90_ms": pct(v, 90)} for mode, v in ms.items()}
    report = {"command": command("bench.mcp_tools", argv), "machine": machine_info(), "rounds": args.rounds,
              "summary": summary, "mcp_server_requests": methods}
    write_report(OUT, report)
    print(json.dumps(summary, indent=2))
    print(methods)


if __name__ == "__main__":
    main()
