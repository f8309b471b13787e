"""Each tool call through the MCP gateway (gateway/mcp_gateway.py), recorded: an outcome row as every request
to the gateway has (`endpoint` "mcp", the key and its team, `deployment` the server, the tool and how it
ended in `extra`, `latency_s`, `status` ok / error with its message; no tokens, no cost, no text), and the
Prometheus counter `pitstop_mcp_gateway_calls_total{server, outcome}`, outcome one of ok, tool_error (the
tool's `isError` result), protocol_error (the server's JSON-RPC error), unreachable, and list_failed (a
listing the server could not answer), rate_limited (the key's or its team's rpm refused the call)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter

from gateway.auth import Caller
from gateway.outcomes import new_request_id, storable
from storage.models import utc_now

if TYPE_CHECKING:
    from gateway.state import GatewayState

log = logging.getLogger("pitstop.outcomes")
ENDPOINT = "mcp"  # the rows' `endpoint`; training exports leave them out (storage/export.py)


class CallLog:
    def __init__(self, state: GatewayState) -> None:
        self.writer = state.writer
        self.calls = Counter("pitstop_mcp_gateway_calls_total", "Tool calls (and failed listings) through the "
                             "MCP gateway's /mcp, by upstream server and outcome", ["server", "outcome"],
                             registry=state.metrics.registry)

    def counted(self, server: str, outcome: str) -> None:
        self.calls.labels(server, outcome).inc()

    def record(self, caller: Caller, server: str, tool: str, started: float, outcome: str,
               error: str | None) -> None:
        self.counted(server, outcome)
        row = {"request_id": new_request_id(), "created_at": utc_now(), "endpoint": ENDPOINT,
               "api_key_id": caller.key_id, "team_id": caller.team.team_id if caller.team else None,
               "deployment": server, "latency_s": time.monotonic() - started, "cost_usd": 0.0,
               "status": "ok" if outcome == "ok" else "error", "http_status": 200, "error": error,
               "extra": {"mcp_server": server, "mcp_tool": tool, "outcome": outcome}}
        try:
            self.writer.submit(storable(row))
        except Exception:  # the caller already has its answer: never fail it for the log
            log.exception("the outcome row of an MCP gateway call to %s was not accepted", server)
