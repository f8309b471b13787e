"""Helpers for the MCP gateway's tests and benchmark: a second upstream MCP server built on the `mcp`
package's low-level Server (`divide`, with an output schema, which answers a JSON-RPC error for a zero
divisor: a protocol error, not a tool's), on a real socket in a thread; a server on the legacy HTTP+SSE
transport (`echo`); and a real `mcp` Client session against a URL with the headers given."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from tests.engine.serving import serve_in_thread

DIVIDE = mcp_types.Tool(
    name="divide", title="Division", description="Divides a by b.",
    input_schema={"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                  "required": ["a", "b"]},
    output_schema={"type": "object", "properties": {"quotient": {"type": "number"}}, "required": ["quotient"]},
    annotations=mcp_types.ToolAnnotations(read_only_hint=True))


def _calc() -> Server:
    async def list_tools(ctx: Any, params: Any) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=[DIVIDE])

    async def call_tool(ctx: Any, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        args = params.arguments or {}
        if params.name != "divide":
            raise MCPError(mcp_types.INVALID_PARAMS, f"no tool {params.name}")
        if args.get("b") == 0:
            raise MCPError(mcp_types.INVALID_PARAMS, "b must not be zero")
        quotient = args["a"] / args["b"]
        return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=str(quotient))],
                                        structured_content={"quotient": quotient})

    return Server("calc", on_list_tools=list_tools, on_call_tool=call_tool)


@contextmanager
def calc_server() -> Iterator[str]:
    """The calc server's MCP URL."""
    app = _calc().streamable_http_app(stateless_http=True, json_response=True)
    with serve_in_thread(app) as url:
        yield url + "/mcp"


@contextmanager
def sse_server() -> Iterator[str]:
    """An MCPServer with one tool, `echo`, served over HTTP+SSE: its SSE URL."""
    server = MCPServer("legacy")

    @server.tool()
    def echo(text: str) -> str:
        """Says it back."""
        return f"echo: {text}"

    with serve_in_thread(server.sse_app()) as url:
        yield url + "/sse"


@asynccontextmanager
async def mcp_client(url: str, key: str | None = None) -> AsyncIterator[Client]:
    """A connected `mcp` Client (Streamable HTTP) sending `key` as its bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
            Client(streamable_http_client(url, http_client=http)) as client:
        yield client
