"""MCP connections kept open for a conversation: one `mcp` Client per (agent session, server, headers), used
by its turns' listing and every tool call, closed once idle for `responses.mcp_idle_s`.

A new connection costs a handshake (`server/discover`, or `initialize` on a pre-2026 server), and the
client lists the server's tools after a call of a tool it has not listed (to check the result against
the tool's output schema): three requests, plus TCP and TLS set-up, for a call that is one request on an
open connection. Scoping a connection to one agent session (a conversation, a `previous_response_id` chain,
else the one Response) keeps a pre-2026 server's session state, such as a browser it drives, from one
turn to the next and never shares it with another conversation; the request's headers are part of the
key, so a connection carries only the credentials it was opened with.

Each connection is owned by a task of its own, which enters the client's contexts and leaves them when
the connection closes: anyio's task groups inside them must be left by the task that entered them, and
the Responses that use a connection come and go in other tasks. With `idle_s` 0 every operation opens
and closes a connection of its own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2

from gateway.mcp_tools import McpServer
from gateway.outbound_policy import OutboundPolicy
from gateway.outbound_transport import outbound_transport

if TYPE_CHECKING:
    from mcp import Client
    from mcp.shared.exceptions import MCPError

log = logging.getLogger("pitstop.gateway")

MAX_OPEN = 256  # connections kept at most; past it the longest idle are closed
SSE_READ_TIMEOUT_S = 24 * 3600.0  # an SSE stream may be quiet while kept: idle connections are closed by the sweep
SWEEP_INTERVAL_S = 5.0


def mcp_error() -> type[MCPError]:
    """The mcp package's error class, imported on first use: the package takes about a second to import
    and most gateways never open an MCP connection (an `except` clause evaluates this only when something
    was raised, and every MCPError comes from a Client, which imported it)."""
    from mcp.shared.exceptions import MCPError

    return MCPError


def transport_failed(exc: MCPError) -> bool:
    """The client's own report that its connection broke (the server unreachable), not the server's answer."""
    from mcp_types import CONNECTION_CLOSED

    return exc.error.code == CONNECTION_CLOSED


@dataclass(frozen=True)
class ConnectionKey:
    scope: str  # the agent session (or Response) the connection serves
    url: str
    headers: tuple[tuple[str, str], ...]


class McpConnection:
    """An open MCP client and the task that owns it."""

    def __init__(self, server: McpServer, http_timeout_s: float, policy: Callable[[], OutboundPolicy]) -> None:
        self.server = server
        self.http_timeout_s = http_timeout_s
        self.policy = policy
        self.client: Client | None = None
        self.in_use = 0
        self.last_used = time.monotonic()
        self.broken = False  # failed in a way that may have left it unusable: closed once let go
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connected and handshaken, or the reason it could not be."""
        self._task = asyncio.create_task(self._own(), name=f"MCP connection to {self.server.url}")
        try:
            await self._ready.wait()
        except BaseException:  # the caller's time ran out, or it was cancelled: stop connecting
            self._task.cancel()
            raise
        if self._error is not None:
            raise self._error

    async def _own(self) -> None:
        from mcp import Client

        # Every connection the client opens goes where the outbound policy allows (gateway/outbound_transport.py).
        transport = backend = outbound_transport(httpx2, self.policy, verify=tls_context())
        try:
            async with httpx2.AsyncClient(headers=self.server.headers, timeout=self.http_timeout_s,
                                          transport=transport) as http, \
                    Client(self._transport(http, transport), cache=None) as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # noqa: BLE001  (any failure of a remote server is the caller's to report)
            if not self._ready.is_set():  # the policy's refusal is the reason, however the client wrapped it
                self._error = backend.refused or exc
            else:  # leaving an open connection failed: nothing waits on it any more
                log.debug("closing the MCP connection to %s: %r", self.server.url, exc)
        finally:
            self.client = None
            self._ready.set()

    def _transport(self, http: httpx2.AsyncClient, transport: httpx2.AsyncBaseTransport) -> Any:
        """The client's transport over `http`: Streamable HTTP, or the legacy HTTP+SSE, whose client builds
        its own httpx2 client (handed one on the same guarded `transport`, left open for `http` to close)."""
        if self.server.transport == "sse":
            from mcp.client.sse import sse_client

            def same_transport(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                               auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, transport=_Unclosed(transport))

            return sse_client(self.server.url, headers=self.server.headers, timeout=self.http_timeout_s,
                              sse_read_timeout=SSE_READ_TIMEOUT_S, httpx_client_factory=same_transport)
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(self.server.url, http_client=http)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self._task


class _Unclosed(httpx2.AsyncBaseTransport):
    """A transport shared with a second client, which its closing leaves open (its first client closes it)."""

    def __init__(self, transport: httpx2.AsyncBaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self.transport.handle_async_request(request)

    async def aclose(self) -> None:
        pass


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every connection: a client that builds its own loads the CA bundle again,
    30-50 ms a connection (bench/mcp_tools.py)."""
    return ssl.create_default_context()


class McpConnections:
    """The gateway's open MCP connections (see the module's docstring)."""

    def __init__(self, idle_s: float, http_timeout_s: float, max_open: int = MAX_OPEN,
                 policy: Callable[[], OutboundPolicy] = OutboundPolicy) -> None:
        self.idle_s = idle_s
        self.http_timeout_s = http_timeout_s
        self.max_open = max_open
        self.policy = policy  # where servers may be (the config's `outbound:`, as reloaded)
        self._open: dict[ConnectionKey, McpConnection] = {}
        self._opening: dict[ConnectionKey, asyncio.Lock] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.opened = 0  # connections opened so far (a count for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._open)

    @contextlib.asynccontextmanager
    async def client(self, scope: str, server: McpServer, fresh: bool = False) -> AsyncIterator[tuple[Client, bool]]:
        """The scope's open client for `server` (opened now if there is none, or `fresh`), and whether it was
        open before. An exception from the block other than the server's own answer (an MCPError, but for
        the client's "connection closed") marks the connection broken; a broken or unkept connection is
        closed once let go."""
        self.policy().check_url(server.url)  # UrlRefused: a name refused before anything is opened
        key = ConnectionKey(scope, server.url, tuple(sorted(server.headers.items())))
        if self.idle_s > 0:
            connection, reused = await self._acquire(key, server, fresh)
        else:
            connection, reused = McpConnection(server, self.http_timeout_s, self.policy), False
            await connection.open()
            self.opened += 1
            connection.in_use += 1
        try:
            assert connection.client is not None
            yield connection.client, reused
        except mcp_error() as exc:
            connection.broken = connection.broken or transport_failed(exc)
            raise
        except BaseException:
            connection.broken = True
            raise
        finally:
            connection.in_use -= 1
            connection.last_used = time.monotonic()
            if connection.broken or self.idle_s <= 0:
                if self._open.get(key) is connection:
                    del self._open[key]
                if connection.in_use == 0:
                    await asyncio.shield(connection.close())

    async def _acquire(self, key: ConnectionKey, server: McpServer, fresh: bool) -> tuple[McpConnection, bool]:
        lock = self._opening.setdefault(key, asyncio.Lock())  # one connection opened per key at a time
        async with lock:
            current = self._open.get(key)
            if current is not None and (fresh or current.broken or current.client is None):
                del self._open[key]
                current.broken = True
                if current.in_use == 0:
                    await current.close()
                current = None
            if current is None:
                current = McpConnection(server, self.http_timeout_s, self.policy)
                await current.open()
                self.opened += 1
                self._open[key] = current
                self._start_sweeping()
                await self._trim()
                reused = False
            else:
                reused = True
            current.in_use += 1
            return current, reused

    async def _trim(self) -> None:
        idle = sorted((c.last_used, k) for k, c in self._open.items() if c.in_use == 0)
        for _, key in idle[: max(0, len(self._open) - self.max_open)]:
            await self._open.pop(key).close()

    def _start_sweeping(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="closing idle MCP connections")

    async def _sweep_forever(self) -> None:
        while self._open:
            await asyncio.sleep(min(SWEEP_INTERVAL_S, self.idle_s))
            await self.sweep()

    async def sweep(self) -> int:
        """Close the connections idle for `idle_s`; how many were closed."""
        now = time.monotonic()
        idle = [k for k, c in self._open.items() if c.in_use == 0 and now - c.last_used >= self.idle_s]
        for key in idle:
            await self._open.pop(key).close()
        for key in [k for k, lock in self._opening.items() if k not in self._open and not lock.locked()]:
            del self._opening[key]  # closed, or let go broken
        return len(idle)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        connections, self._open = list(self._open.values()), {}
        self._opening.clear()
        await asyncio.gather(*(c.close() for c in connections))
