"""A small MCP server for the gateway's remote MCP tests (the `mcp` package's MCPServer over Streamable
HTTP, on a real socket in a thread): `forecast` (read-only), `add`, and `broken` (always fails); it
counts the JSON-RPC methods it was sent and keeps each request's headers. With `sessions` set it
knows no `server/discover` and names a session in its answers (`mcp-session-id`), as a pre-2026 server
does, and `end_sessions()`
makes it answer 404 to every request that names one from before, as such a server does to a session
it has ended."""

from __future__ import annotations

import asyncio
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
    sessions: bool = False
    session_epoch: int = 0  # sessions named before this epoch are ended
    refused: Counter = field(default_factory=Counter)  # methods answered 404 for an ended session
    delay_s: float = 0.0  # every request waits this long first, as on a server this far away

    def reset(self) -> None:
        self.methods.clear()
        self.headers.clear()
        self.calls.clear()
        self.refused.clear()
        self.sessions = False
        self.delay_s = 0.0

    def end_sessions(self) -> None:
        self.session_epoch += 1


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
        if spy.delay_s:
            await asyncio.sleep(spy.delay_s)
        spy.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        body = b""
        more = True
        messages = []
        while more:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        method, request_id = None, None
        with suppress(ValueError, AttributeError):
            parsed = json.loads(body)
            method, request_id = parsed.get("method"), parsed.get("id")
        if spy.sessions and method == "server/discover":  # a pre-2026 server: the client falls back to initialize
            spy.methods[method] += 1
            unknown = {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            return await send({"type": "http.response.body", "body": json.dumps(unknown).encode()})
        named = dict(spy.headers[-1]).get("mcp-session-id")
        if named is not None and int(named.split("-")[0]) < spy.session_epoch:
            spy.refused[method] += 1
            await send({"type": "http.response.start", "status": 404, "headers": []})
            return await send({"type": "http.response.body", "body": b""})
        spy.methods[method] += 1

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        async def naming(message: dict) -> None:
            if spy.sessions and message["type"] == "http.response.start":
                session = f"{spy.session_epoch}-session".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"mcp-session-id", session)]}
            await send(message)

        return await app(scope, replay, naming)

    return recorded


@contextmanager
def mcp_server(port: int = 0) -> Iterator[McpSpy]:
    """On `port`, else a free one."""
    spy = McpSpy()
    app = _server(spy).streamable_http_app(stateless_http=True, json_response=True)
    with serve_in_thread(_recording(app, spy), port=port) as url:  # type: ignore[arg-type]
        spy.url = url + "/mcp"
        yield spy
