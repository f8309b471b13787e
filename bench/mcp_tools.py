"""What remote MCP tools on the Responses API (gateway/mcp_loop.py) cost a turn: an in-process gateway in
front of the tests' mock upstream (answering at once) and the tests' MCP server (the `mcp` package,
Streamable HTTP, on a local socket), one request at a time, the modes interleaved:

- `plain`: a turn without tools (one model call);
- `listed`: the same turn offering the MCP server's tools, listed for it (the model calls none);
- `listed earlier`: the same, continuing a stored response that holds the listing (no listing);
- `one call` / `three calls`: a turn whose model calls one tool (three, one after another): listed, each
  call made, the model called again after each; over the Response's kept connection
  (gateway/mcp_connections.py), and `..., a connection each` with every listing and call on a
  connection of its own, as the gateway made them before (`responses.mcp_idle_s: 0`, set on the same
  gateway between requests);
- `one call, TLS context each`: `one call`, each connection building its own TLS context (loading the
  CA bundle) as an httpx client does by default, which the gateway does not;
- `direct call`, `direct call, new connection`: one tool call made by the gateway's MCP client alone,
  on a connection kept from the call before, or on a new one.

Each mode runs twice: against the server as it answers on this machine, and with every request to it
delayed by `--server-delay-ms` first (a server that far away; TCP and TLS set-up of a new connection
over such a distance would add more, and are not emulated).

    .venv/bin/python -m bench.mcp_tools [--rounds 100] [--server-delay-ms 20]

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
    parser.add_argument("--server-delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the MCP server's and clients' request logs, in this process
    from gateway import mcp_connections
    from gateway.mcp_client import McpSession, call_tool
    from gateway.mcp_connections import McpConnections
    from gateway.mcp_tools import mcp_servers_of
    from tests.gateway.harness import gateway_config, model_entry, running_gateway
    from tests.gateway.mcp_server import mcp_server
    from tests.gateway.upstream import UpstreamProcess

    results: dict[str, dict] = {}
    upstream = UpstreamProcess("a")
    try:
        with tempfile.TemporaryDirectory() as work, mcp_server() as spy:
            tool = {"type": "mcp", "server_label": "weather", "server_url": spy.url, "require_approval": "never"}
            server = mcp_servers_of({"tools": [tool]})[0]
            raw = gateway_config(Path(work), [model_entry("up", upstream.api_base)], ranking={"enabled": False})
            with running_gateway(raw) as gateway, gateway.openai() as client:
                assert gateway.state is not None
                kept = gateway.state.responses.mcp
                listed = client.responses.create(model="up", input="[tools:0] hi", tools=[tool])  # type: ignore[list-item]
                direct = McpConnections(idle_s=3600, http_timeout_s=30)
                loop = asyncio.new_event_loop()
                for delay_ms in (0.0, args.server_delay_ms):
                    spy.reset()
                    spy.delay_s = delay_ms / 1000
                    ms: dict[str, list[float]] = defaultdict(list)

                    def timed(mode: str, calls: int = 0, idle_s: float | None = None, **request: object) -> None:
                        kept.idle_s = 300.0 if idle_s is None else idle_s
                        started = time.perf_counter()
                        response = client.responses.create(model="up", **request)  # type: ignore[call-overload]  # noqa: B023
                        ms[mode].append((time.perf_counter() - started) * 1000)  # noqa: B023
                        kept.idle_s = 300.0
                        assert response.output[-1].type == "message", response.output
                        assert sum(item.type == "mcp_call" for item in response.output) == calls, response.output

                    def direct_call(mode: str, connections: McpConnections) -> None:
                        started = time.perf_counter()
                        result = loop.run_until_complete(
                            call_tool(server, McpSession(connections, "bench"), "forecast", {"city": "Oslo"}))
                        ms[mode].append((time.perf_counter() - started) * 1000)  # noqa: B023
                        assert result.output == "sunny in Oslo", result

                    for _ in range(args.rounds):
                        timed("plain", input="[tools:0] hi")
                        timed("listed", input="[tools:0] hi", tools=[tool])
                        timed("listed earlier", input="[tools:0] hi", tools=[tool], previous_response_id=listed.id)
                        for mode, calls in (("one call", 1), ("three calls", 3)):
                            timed(mode, calls, input=f"[tools:{calls}] Oslo", tools=[tool])
                            timed(f"{mode}, a connection each", calls, 0.0, input=f"[tools:{calls}] Oslo", tools=[tool])
                        shared = mcp_connections.tls_context
                        mcp_connections.tls_context = ssl.create_default_context  # type: ignore[assignment]
                        try:
                            timed("one call, TLS context each", 1, input="[tools:1] Oslo", tools=[tool])
                        finally:
                            mcp_connections.tls_context = shared
                        direct_call("direct call", direct)
                        direct_call("direct call, new connection", McpConnections(idle_s=0, http_timeout_s=30))
                    results[f"server_delay_{delay_ms:g}_ms"] = {
                        "summary": {mode: {"median_ms": statistics.median(v), "p90_ms": pct(v, 90)}
                                    for mode, v in ms.items()},
                        "mcp_server_requests": dict(spy.methods)}
                    print(json.dumps(results, indent=2))
                loop.run_until_complete(direct.close())
                loop.close()
    finally:
        upstream.close()

    report = {"command": command("bench.mcp_tools", argv), "machine": machine_info(), "rounds": args.rounds,
              **results}
    write_report(OUT, report)


if __name__ == "__main__":
    main()
