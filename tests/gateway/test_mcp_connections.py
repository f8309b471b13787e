"""MCP connections kept for an agent session (gateway/mcp_connections.py, gateway/mcp_client.py), against a
real MCP server on a socket: one handshake and one listing for a session's calls, parallel calls on one
connection, scopes and headers kept apart, idle connections closed, an ended session's request sent
again on a new connection, and a server that went away and came back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from gateway.mcp_client import McpSession, call_tool, list_tools
from gateway.mcp_connections import McpConnections
from gateway.mcp_tools import McpServer
from tests.gateway.mcp_server import McpSpy, mcp_server


@pytest.fixture(scope="module")
def server() -> Iterator[McpSpy]:
    with mcp_server() as spy:
        yield spy


@pytest.fixture
def spy(server: McpSpy) -> McpSpy:
    server.reset()
    return server


def weather(spy: McpSpy, **headers: str) -> McpServer:
    return McpServer("weather", spy.url, headers, None, "never", None, "tools[0]")


def test_a_sessions_listing_and_calls_share_one_connection(spy: McpSpy) -> None:
    async def run() -> tuple[list[str], list[str | None], int]:
        connections = McpConnections(idle_s=60, http_timeout_s=30)
        session = McpSession(connections, "key:resp_1")
        listed = [t["name"] for t in await list_tools(weather(spy), session)]
        outputs = [(await call_tool(weather(spy), session, "add", {"a": i, "b": 1})).output for i in range(3)]
        kept = len(connections)
        await connections.close()
        return listed, outputs, kept

    listed, outputs, kept = asyncio.run(run())
    assert listed == ["forecast", "add", "broken"] and outputs == ["1", "2", "3"] and kept == 1
    assert spy.methods == {"server/discover": 1, "tools/list": 1, "tools/call": 3}


def test_without_keeping_each_operation_opens_its_own(spy: McpSpy) -> None:
    async def run() -> tuple[int, int]:
        connections = McpConnections(idle_s=0, http_timeout_s=30)
        session = McpSession(connections, "key:resp_1")
        await list_tools(weather(spy), session)
        for i in range(2):
            await call_tool(weather(spy), session, "add", {"a": i, "b": 1})
        return connections.opened, len(connections)

    assert asyncio.run(run()) == (3, 0)
    assert spy.methods["server/discover"] == 3 and spy.methods["tools/call"] == 2


def test_parallel_calls_go_over_one_connection(spy: McpSpy) -> None:
    async def run() -> tuple[list[str | None], int]:
        connections = McpConnections(idle_s=60, http_timeout_s=30)
        session = McpSession(connections, "s")
        results = await asyncio.gather(*(call_tool(weather(spy), session, "add", {"a": i, "b": 10}) for i in range(6)))
        opened = connections.opened
        await connections.close()
        return [r.output for r in results], opened

    outputs, opened = asyncio.run(run())
    assert outputs == [str(10 + i) for i in range(6)] and opened == 1
    assert spy.methods["server/discover"] == 1 and spy.methods["tools/call"] == 6


def test_scopes_and_headers_never_share_a_connection(spy: McpSpy) -> None:
    async def run() -> tuple[int, int]:
        connections = McpConnections(idle_s=60, http_timeout_s=30)
        for scope, headers in (("a", {}), ("b", {}), ("a", {"authorization": "Bearer t2"}), ("a", {})):
            await call_tool(weather(spy, **headers), McpSession(connections, scope), "add", {"a": 1, "b": 1})
        counts = connections.opened, len(connections)
        await connections.close()
        return counts

    assert asyncio.run(run()) == (3, 3)  # the last call reuses the first's
    # Only the connection opened with the token sent it: its discover, the listing it needed, its call.
    assert [h.get("authorization") for h in spy.headers if h.get("authorization")] == ["Bearer t2"] * 3


def test_idle_connections_are_closed_and_close_ends_every_task(spy: McpSpy) -> None:
    async def run() -> tuple[int, int, int, int]:
        connections = McpConnections(idle_s=0.2, http_timeout_s=30)
        await call_tool(weather(spy), McpSession(connections, "a"), "add", {"a": 1, "b": 1})
        before = len(connections)
        await asyncio.sleep(0.5)  # the sweeper closes it (and stops: nothing is left to watch)
        after = len(connections)
        await call_tool(weather(spy), McpSession(connections, "a"), "add", {"a": 1, "b": 1})
        tasks = {t.get_name() for t in asyncio.all_tasks()}
        await connections.close()
        left = sum(name.startswith("MCP connection") for name in {t.get_name() for t in asyncio.all_tasks()})
        return before, after, sum(name.startswith("MCP connection") for name in tasks), left

    assert asyncio.run(run()) == (1, 0, 1, 0)
    assert spy.methods["server/discover"] == 2


def test_a_request_to_an_ended_session_is_sent_again_on_a_new_connection(spy: McpSpy) -> None:
    """A pre-2026 server answers 404 to a session it ended; it did not act on the request, so the client
    opens a new session and sends it again (once): the tool runs exactly once."""
    spy.sessions = True

    async def run() -> tuple[str | None, str | None, int]:
        connections = McpConnections(idle_s=60, http_timeout_s=30)
        session = McpSession(connections, "s")
        first = await call_tool(weather(spy), session, "add", {"a": 1, "b": 1})
        spy.end_sessions()
        again = await call_tool(weather(spy), session, "add", {"a": 2, "b": 2})
        opened = connections.opened
        await connections.close()
        return first.output, again.output, opened

    first, again, opened = asyncio.run(run())
    assert (first, again, opened) == ("2", "4", 2)
    assert spy.refused["tools/call"] == 1 and spy.calls == [("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})]


def test_a_server_that_went_away_and_came_back() -> None:
    """While the server is down a call is an http_error and a listing a 424; once it is back on its port,
    the same session's next call reaches it, on a new connection; a restart between calls goes unnoticed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> None:
        connections = McpConnections(idle_s=60, http_timeout_s=5)
        session = McpSession(connections, "s")
        with mcp_server(port) as spy:
            assert (await call_tool(weather(spy), session, "add", {"a": 1, "b": 2})).output == "3"
            server = weather(spy)
        down = await call_tool(server, session, "add", {"a": 1, "b": 2}, timeout_s=5)
        assert down.output is None and down.error is not None and down.error["type"] == "http_error"
        with pytest.raises(Exception, match="could not list its tools"):
            await list_tools(server, session, timeout_s=5)
        with mcp_server(port) as back:
            assert (await call_tool(server, session, "add", {"a": 2, "b": 2})).output == "4"
            assert back.calls == [("add", {"a": 2, "b": 2})]
        opened = connections.opened
        with mcp_server(port) as restarted:  # restarted while nothing was called: the kept connection goes on
            assert (await call_tool(server, session, "add", {"a": 3, "b": 2})).output == "5"
            assert restarted.calls == [("add", {"a": 3, "b": 2})] and connections.opened == opened
        await connections.close()

    asyncio.run(run())


def test_the_idle_time_is_configured_and_checked() -> None:
    from pydantic import ValidationError

    from gateway.section_config import ResponsesConfig

    assert ResponsesConfig().mcp_idle_s == 300.0 and ResponsesConfig(mcp_idle_s=0).mcp_idle_s == 0
    with pytest.raises(ValidationError, match="mcp_idle_s"):
        ResponsesConfig(mcp_idle_s=-1)
