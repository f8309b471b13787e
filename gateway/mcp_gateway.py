"""The gateway as an MCP server (an MCP gateway, as LiteLLM's, Kong's and Portkey's): `/mcp` is one Streamable
HTTP MCP endpoint that agents (Claude Code, Cursor, the Agents SDK, any `mcp` client) connect to, offering
the union of the tools of the servers in `mcp_servers:` (gateway/mcp_gateway_config.py), each named
`<server>__<tool>`; `/mcp/<server>` offers one server's tools under their own names. Under Pitstop's keys:
a request without a valid key is a 401 before anything MCP, a key (or its team) that lists `mcp_servers`
sees and calls those servers only.

Served by the `mcp` package's server side in stateless mode (each POST a request of its own: no session
to pin a client to one replica), answering JSON. A listing or a call goes to the upstream over connections
kept open by the gateway (gateway/mcp_connections.py, the Responses API's remote MCP machinery), shared
by every caller of the same server: the credentials are the config's, never the caller's. What an upstream
answers is relayed: its result (an `isError` result included) as it is, its protocol error as the same
JSON-RPC error; an upstream that cannot be reached is the call's tool error naming it. A call takes a rate
slot of its key's and team's rpm (a refusal is a JSON-RPC error with the 429's message); listings take none.
Each call is an outcome row (gateway/mcp_gateway_calls.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engine.server.errors import APIError
from gateway.auth import Caller
from gateway.mcp_client import (
    CALL_TIMEOUT_S,
    LIST_TIMEOUT_S,
    McpSession,
    all_tools,
    call_failure,
    failure_reason,
)
from gateway.mcp_connections import McpConnections, mcp_error
from gateway.mcp_gateway_calls import CallLog
from gateway.mcp_gateway_config import SEPARATOR, McpServerConfig
from gateway.mcp_tools import error_text
from gateway.outbound_policy import OutboundPolicy

if TYPE_CHECKING:
    import mcp_types
    from mcp.server.context import ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from gateway.state import GatewayState

log = logging.getLogger("pitstop.gateway")
SCOPE = "mcp-gateway"  # the connections' scope: one set for every caller (the credentials are the config's)
_ACCESS = "pitstop.mcp"  # where the request's scope carries who asked, and which servers they reach


@dataclass(frozen=True)
class Access:
    """What one request may reach: the servers its key may use (of those configured), and whether it came
    to one server's endpoint (its tools unprefixed)."""

    caller: Caller
    servers: dict[str, McpServerConfig]
    single: bool

    def exposed(self, server: str, tool: str) -> str:
        return tool if self.single else f"{server}{SEPARATOR}{tool}"

    def resolve(self, name: str) -> tuple[McpServerConfig, str]:
        """The server and tool a called name stands for; an MCP invalid-params error for any other."""
        if self.single:
            server, tool = next(iter(self.servers.values())), name
        else:
            prefix, _, tool = name.partition(SEPARATOR)
            found = self.servers.get(prefix) if tool else None
            if found is None:
                raise _mcp_error(_invalid_params(), f"unknown tool {name!r}: tools here are named "
                                 f"'<server>{SEPARATOR}<tool>', of the servers {', '.join(sorted(self.servers))}")
            server = found
        if not server.offers(tool):
            raise _mcp_error(_invalid_params(), f"the tool {tool!r} of the MCP server {server.name!r} is not "
                             "offered by this gateway (mcp_servers' allowed_tools / disallowed_tools)")
        return server, tool


class McpGateway:
    """One app's MCP endpoint: the MCP server, its session manager (run by a task of its own, started at the
    first request: the `mcp` package takes a second to import), and the upstream connections."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.connections = McpConnections(state.settings.responses.mcp_idle_s, CALL_TIMEOUT_S, policy=self._policy)
        self.session = McpSession(self.connections, SCOPE)
        self.log = CallLog(state)
        self._manager: StreamableHTTPSessionManager | None = None
        self._owner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()

    def _policy(self) -> OutboundPolicy:
        """The operator's servers may be anywhere (a private address too); `outbound.proxy` still holds."""
        return OutboundPolicy(proxy=self.state.outbound().proxy)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            access = await self._access(Request(scope), scope.get("path_params", {}).get("server"))
        except APIError as error:
            return await error.response()(scope, receive, send)
        manager = await self._running()
        await manager.handle_request({**scope, _ACCESS: access}, receive, send)

    async def _access(self, request: Request, only: str | None) -> Access:
        caller = await self.state.auth.authenticate(request.headers)  # the 401 of every endpoint
        configured = {s.name: s for s in self.state.settings.mcp_servers}
        if only is not None:
            if only not in configured:
                raise APIError(404, f"no MCP server {only!r} here (mcp_servers: {', '.join(configured) or 'none'})",
                               code="mcp_server_not_found")
            if not caller.may_use_mcp(only):
                raise APIError(403, f"this API key may not use the MCP server {only!r}", code="mcp_server_not_allowed")
            return Access(caller, {only: configured[only]}, single=True)
        return Access(caller, {n: s for n, s in configured.items() if caller.may_use_mcp(n)}, single=False)

    async def _running(self) -> StreamableHTTPSessionManager:
        if self._owner is None:
            self._owner = asyncio.create_task(self._serve(), name="the MCP gateway's session manager")
        await self._started.wait()
        if self._manager is None:
            raise APIError(503, "the MCP endpoint could not start", code="mcp_unavailable")
        return self._manager

    async def _serve(self) -> None:
        """Owns the session manager's task group (entered and left by this one task, as anyio asks)."""
        from mcp.server.lowlevel.server import Server
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        # No input schema to check a call's Mcp-Param-* headers against here: without one the package would
        # run tools/list (every upstream's listing) before each call; the upstream checks its own tools' calls.
        server = Server("pitstop", on_list_tools=self._list_tools, on_call_tool=self._call_tool,
                        get_tool_input_schema=lambda name: None)
        manager = StreamableHTTPSessionManager(server, json_response=True, stateless=True,
                                               max_request_body_size=self.state.settings.server.max_body_bytes)
        try:
            async with manager.run():
                self._manager = manager
                self._started.set()
                await self._stop.wait()
        finally:
            self._manager = None
            self._started.set()

    async def _list_tools(self, ctx: ServerRequestContext, params: Any) -> mcp_types.ListToolsResult:
        import mcp_types

        access = _access_of(ctx)
        servers = list(access.servers.values())
        listings = await asyncio.gather(*(self._listed(s, access.single) for s in servers))
        tools = [tool.model_copy(update={"name": access.exposed(server.name, tool.name)})
                 for server, listed in zip(servers, listings, strict=True) for tool in listed if server.offers(tool.name)]
        return mcp_types.ListToolsResult(tools=tools)

    async def _listed(self, server: McpServerConfig, alone: bool) -> list[mcp_types.Tool]:
        """The server's tools; where it cannot list them, none on /mcp (the others' are still offered) and
        an MCP error naming it on its own endpoint."""
        try:
            return await self.session.run(server.upstream(), all_tools, LIST_TIMEOUT_S)
        except (Exception, TimeoutError) as exc:
            log.warning("the MCP gateway could not list the tools of %s (%s): %r", server.name, server.url, exc)
            self.log.counted(server.name, "list_failed")
            if alone:
                raise _mcp_error(_internal_error(), f"the MCP server {server.name!r} could not list its tools: "
                                 f"{failure_reason(exc)}") from None
            return []

    async def _call_tool(self, ctx: ServerRequestContext, params: mcp_types.CallToolRequestParams
                         ) -> mcp_types.CallToolResult:
        import mcp_types

        access = _access_of(ctx)
        server, tool = access.resolve(params.name)
        upstream, started = server.upstream(), time.monotonic()
        try:  # a rate slot of the key's (and its team's) rpm, as every request takes; a tool call holds no budget
            await self.state.admit(access.caller)
        except APIError as refused:  # the 429's words as a JSON-RPC error: the agent's loop, not the tool, failed
            self.log.record(access.caller, server.name, tool, started, "rate_limited", refused.message)
            raise _mcp_error(_RATE_LIMITED, refused.message) from None
        try:
            result = await self.session.run(upstream, lambda client: client.call_tool(tool, params.arguments or {}),
                                            CALL_TIMEOUT_S)
        except (Exception, TimeoutError) as exc:
            error = call_failure(upstream, tool, exc).error or {}
            if error.get("type") == "mcp_protocol_error":  # the server's own JSON-RPC error: relayed as it is
                self.log.record(access.caller, server.name, tool, started, "protocol_error", error["message"])
                raise _mcp_error(error["code"], error["message"]) from None
            message = f"the MCP server {server.name!r} could not be reached: {error_text(error)}"
            self.log.record(access.caller, server.name, tool, started, "unreachable", message)
            return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=message)], is_error=True)
        self.log.record(access.caller, server.name, tool, started, "tool_error" if result.is_error else "ok",
                        _text(result) if result.is_error else None)
        return result

    async def close(self) -> None:
        self._stop.set()
        if self._owner is not None:
            with contextlib.suppress(BaseException):
                await self._owner
        await self.connections.close()


_RATE_LIMITED = -32029  # an implementation-defined JSON-RPC server error (-32000 to -32099): the 429's


def _access_of(ctx: ServerRequestContext) -> Access:
    request = ctx.request
    access = request.scope.get(_ACCESS) if request is not None else None
    if not isinstance(access, Access):  # every request comes through McpGateway.handle, which set it
        raise _mcp_error(_internal_error(), "the request's access was not established")
    return access


def _text(result: mcp_types.CallToolResult) -> str:
    return "\n".join(getattr(part, "text", "") for part in result.content) or "the tool reported an error"


def _mcp_error(code: int, message: str) -> Exception:
    return mcp_error()(code, message)


def _invalid_params() -> int:
    from mcp_types import INVALID_PARAMS

    return INVALID_PARAMS


def _internal_error() -> int:
    from mcp_types import INTERNAL_ERROR

    return INTERNAL_ERROR


def gateway_of(state: GatewayState, app_state: Any) -> McpGateway:
    """The app's MCP gateway, made at its first request."""
    gateway = getattr(app_state, "mcp_gateway", None)
    if gateway is None:
        gateway = app_state.mcp_gateway = McpGateway(state)
    return gateway


async def close(app: Any) -> None:
    """At shutdown: the session manager stopped, the upstream connections closed (nothing if never used)."""
    gateway = getattr(app.state, "mcp_gateway", None)
    if gateway is not None:
        await gateway.close()


class _Endpoint:
    """/mcp and /mcp/{server}, as ASGI (the session manager answers on the request's own send)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        await gateway_of(app.state.pitstop, app.state).handle(scope, receive, send)


ROUTES = [Route("/mcp", _Endpoint(), methods=["GET", "POST", "DELETE"]),
          Route("/mcp/{server}", _Endpoint(), methods=["GET", "POST", "DELETE"])]
