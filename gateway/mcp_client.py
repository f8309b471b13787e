"""The gateway as an MCP client (the `mcp` package, Streamable HTTP): a server's tools listed, and a tool
called, each over a connection of its own with the request's headers, under a time limit. A call's
failure is part of its answer (the `mcp_call` item's `error`: the server's tool failed, the protocol
failed, or HTTP did), as OpenAI reports it; a listing's failure is the turn's 424."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from engine.server.errors import APIError
from gateway.mcp_tools import McpServer

log = logging.getLogger("pitstop.gateway")

LIST_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CallResult:
    output: str | None
    error: dict | None  # OpenAI's shapes: mcp_tool_execution_error, mcp_protocol_error, http_error


def _client(server: McpServer, http: httpx2.AsyncClient) -> Client:
    return Client(streamable_http_client(server.url, http_client=http), cache=None)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every connection: a client that builds its own loads the CA bundle again,
    30-50 ms a call (bench/mcp_tools.py)."""
    return ssl.create_default_context()


def _http(server: McpServer, timeout_s: float) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=server.headers, timeout=timeout_s, verify=_tls())


async def list_tools(server: McpServer, timeout_s: float = LIST_TIMEOUT_S) -> list[dict]:
    """The server's tools as `mcp_list_tools` lists them (name, description, input_schema, annotations);
    a 424 naming the tool where the server cannot be reached or answers badly."""
    try:
        async with asyncio.timeout(timeout_s), _http(server, timeout_s) as http, _client(server, http) as client:
            tools, cursor = [], None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
    except (Exception, TimeoutError) as exc:  # any failure of a remote server is the same to the client
        log.warning("listing the tools of MCP server %s (%s) failed: %r", server.label, server.url, exc)
        raise APIError(424, f"the MCP server {server.label!r} could not list its tools: {_reason(exc)}",
                       f"{server.where}.server_url", "mcp_list_tools_failed") from None
    return [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
             "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True) if t.annotations else None} for t in tools]


async def call_tool(server: McpServer, name: str, arguments: dict, timeout_s: float = CALL_TIMEOUT_S) -> CallResult:
    """One tool call: its text output, or the error it ended in."""
    try:
        async with asyncio.timeout(timeout_s), _http(server, timeout_s) as http, _client(server, http) as client:
            result = await client.call_tool(name, arguments)
    except MCPError as exc:
        return CallResult(None, {"type": "mcp_protocol_error", "code": exc.error.code, "message": exc.error.message})
    except httpx2.HTTPStatusError as exc:
        return CallResult(None, {"type": "http_error", "code": exc.response.status_code, "message": str(exc)})
    except (Exception, TimeoutError) as exc:
        log.warning("calling %s on MCP server %s failed: %r", name, server.label, exc)
        return CallResult(None, {"type": "http_error", "code": 0, "message": _reason(exc)})
    parts = [p.model_dump(exclude_none=True) for p in result.content]
    if result.is_error:
        return CallResult(None, {"type": "mcp_tool_execution_error", "content": parts})
    texts = [p["text"] for p in parts if p.get("type") == "text"]
    if texts and len(texts) == len(parts):
        return CallResult("\n".join(texts), None)
    return CallResult(json.dumps(parts if parts else result.structured_content), None)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "it did not answer in time"
    inner: Any = exc
    while isinstance(inner, BaseExceptionGroup) and inner.exceptions:  # anyio's task groups wrap them
        inner = inner.exceptions[0]
    return str(inner) or type(inner).__name__
