"""The gateway as an MCP client (the `mcp` package, Streamable HTTP): a server's tools listed, and a tool
called, over the agent session's connection to it (gateway/mcp_connections.py), under a time limit. A
call's failure is part of its answer (the `mcp_call` item's `error`: the server's tool failed, the
protocol failed, or HTTP did), as OpenAI reports it; a listing's failure is the turn's 424. A pre-2026
server that ended a kept connection's session ("Session terminated", its 404) had not acted on the
request, so it is sent again, once, on a new connection, as the protocol asks of a client."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from engine.server.errors import APIError
from gateway.mcp_connections import McpConnections, mcp_error, transport_failed
from gateway.mcp_tools import McpServer
from gateway.outbound_policy import UrlRefused, refusal_of, url_not_allowed

if TYPE_CHECKING:
    from mcp import Client
    from mcp.shared.exceptions import MCPError

log = logging.getLogger("pitstop.gateway")

LIST_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 120.0
T = TypeVar("T")


@dataclass(frozen=True)
class CallResult:
    output: str | None
    error: dict | None  # OpenAI's shapes: mcp_tool_execution_error, mcp_protocol_error, http_error


@dataclass(frozen=True)
class McpSession:
    """What the turn's MCP operations go through: the gateway's connections, and the agent session (or
    Response) whose connections they use."""

    connections: McpConnections
    scope: str

    def check(self, server: McpServer) -> None:
        """The server's host name checked against the outbound policy: a 400 naming its `server_url` where
        it is refused, before anything is listed or called (its addresses are checked on connecting)."""
        try:
            self.connections.policy().check_url(server.url)
        except UrlRefused as refused:
            raise url_not_allowed(refused, f"{server.where}.server_url") from None

    async def run(self, server: McpServer, operation: Callable[[Client], Awaitable[T]], timeout_s: float) -> T:
        async with asyncio.timeout(timeout_s):
            try:
                async with self.connections.client(self.scope, server) as (client, reused):
                    return await operation(client)
            except mcp_error() as exc:
                if not (reused and _session_ended(exc)):
                    raise
            async with self.connections.client(self.scope, server, fresh=True) as (client, _):
                return await operation(client)


def _session_ended(exc: MCPError) -> bool:
    return exc.error.message == "Session terminated"


async def all_tools(client: Client) -> list[Any]:
    tools, cursor = [], None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            return tools


async def list_tools(server: McpServer, session: McpSession, timeout_s: float = LIST_TIMEOUT_S) -> list[dict]:
    """The server's tools as `mcp_list_tools` lists them (name, description, input_schema, annotations);
    a 424 naming the tool where the server cannot be reached or answers badly."""
    try:
        tools = await session.run(server, all_tools, timeout_s)
    except (Exception, TimeoutError) as exc:  # any failure of a remote server is the same to the client
        if (refused := refusal_of(exc)) is not None:  # the gateway's outbound policy: the client's 400
            log.warning("MCP server %s (%s) refused by the outbound policy: %s", server.label, server.url, refused)
            raise url_not_allowed(refused, f"{server.where}.server_url") from None
        log.warning("listing the tools of MCP server %s (%s) failed: %r", server.label, server.url, exc)
        raise APIError(424, f"the MCP server {server.label!r} could not list its tools: {failure_reason(exc)}",
                       f"{server.where}.server_url", "mcp_list_tools_failed") from None
    return [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
             "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True) if t.annotations else None} for t in tools]


async def call_tool(server: McpServer, session: McpSession, name: str, arguments: dict,
                    timeout_s: float = CALL_TIMEOUT_S) -> CallResult:
    """One tool call: its text output, or the error it ended in."""
    try:
        result = await session.run(server, lambda client: client.call_tool(name, arguments), timeout_s)
    except (Exception, TimeoutError) as exc:
        return call_failure(server, name, exc)
    parts = [p.model_dump(exclude_none=True) for p in result.content]
    if result.is_error:
        return CallResult(None, {"type": "mcp_tool_execution_error", "content": parts})
    texts = [p["text"] for p in parts if p.get("type") == "text"]
    if texts and len(texts) == len(parts):
        return CallResult("\n".join(texts), None)
    return CallResult(json.dumps(parts if parts else result.structured_content), None)


def call_failure(server: McpServer, name: str, exc: BaseException) -> CallResult:
    """A call's failure as its item's error, in OpenAI's shapes."""
    if (refused := refusal_of(exc)) is not None:  # the server's address is refused (DNS changed since the listing)
        log.warning("calling %s on MCP server %s refused by the outbound policy: %s", name, server.label, refused)
        return CallResult(None, {"type": "http_error", "code": 400, "message": f"url_not_allowed: {refused}"})
    if isinstance(exc, mcp_error()):
        if transport_failed(exc):  # the server could not be reached: HTTP failed, as on a new connection
            log.warning("calling %s on MCP server %s failed: %r", name, server.label, exc)
            return CallResult(None, {"type": "http_error", "code": 0, "message": "the connection to the server closed"})
        return CallResult(None, {"type": "mcp_protocol_error", "code": exc.error.code, "message": exc.error.message})
    if isinstance(exc, httpx2.HTTPStatusError):
        return CallResult(None, {"type": "http_error", "code": exc.response.status_code, "message": str(exc)})
    log.warning("calling %s on MCP server %s failed: %r", name, server.label, exc)
    return CallResult(None, {"type": "http_error", "code": 0, "message": failure_reason(exc)})


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "it did not answer in time"
    inner: Any = exc
    while isinstance(inner, BaseExceptionGroup) and inner.exceptions:  # anyio's task groups wrap them
        inner = inner.exceptions[0]
    return str(inner) or type(inner).__name__
