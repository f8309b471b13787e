"""A small MCP server for the gateway's remote MCP tests (the `mcp` package's MCPServer over Streamable
HTTP, on a real socket in a thread): `forecast` (read-only), `add`, and `broken` (always fails); it
counts the JSON-RPC methods it was sent and keeps each request's headers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

from tests.engine.serving import serve_in_thread


@dataclass
class McpSpy:
    url: str = ""
    methods: Counter = field(default_factory=Counter)
    headers: list[dict[str, str]] = field(default_factory=list)
    calls: list[tuple[str, dict]] = field(default_factory=list)

    def reset(self) -> None:
        self.methods.clear()
        self.headers.clear()
        self.calls.clear()


def _server(spy: McpSpy) -> MCPServer:
    server = MCPServer("weather")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def forecast(city: str) -> str:
        """The weather in a city."""
        spy.calls.append(("forecast", {"city": city}))
        return f"sunny in {city}"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        spy.calls.append(("add", {"a": a, "b": b}))
        return a + b

    @server.tool()
    def broken(q: str) -> str:
        """Always fails."""
        spy.calls.append(("broken", {"q": q}))
        raise ValueError("the tool broke")

    return server


def _recording(app: Any, spy: McpSpy) -> Any:
    """The app, with each request's headers and JSON-RPC method noted."""
    async def recorded(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        spy.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = b""
        more = True
        messages = []
        while more:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        with suppress(ValueError, AttributeError):
            spy.methods[json.loads(body).get("method")] += 1

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        return await app(scope, replay, send)

    return recorded


@contextmanager
def mcp_server() -> Iterator[McpSpy]:
    spy = McpSpy()
    app = _server(spy).streamable_http_app(stateless_http=True, json_response=True)
    with serve_in_thread(_recording(app, spy)) as url:  # type: ignore[arg-type]
        spy.url = url + "/mcp"
        yield spy
