"""Client URLs through an egress proxy (`outbound.proxy`, engine/net_proxy.py, engine/net_transport.py), over
real sockets with a forward proxy (tests/gateway/forward_proxy.py): which proxy a request takes (a URL, or the
environment's variables with NO_PROXY's exceptions); a request through it reaches its target and the proxy saw
it; a target the policy refuses is refused before the proxy sees anything, a redirect's hop too; the proxy
itself, the operator's, is not held to the address rules; httpx2 (the mcp package's) alike; and through a
gateway, a remote MCP tool's calls and a webhook's delivery go through the proxy, a reload taking it away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import httpx2
import openai
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route

from engine.net_guard import OutboundPolicy, UrlRefused
from engine.net_proxy import proxy_for
from gateway.outbound_config import OutboundConfig
from gateway.outbound_transport import guarded_httpx, outbound_transport
from tests.engine.serving import serve_in_thread
from tests.gateway.forward_proxy import ForwardProxy, forward_proxy
from tests.gateway.harness import Receiver
from tests.gateway.mcp_server import McpSpy, mcp_server
from tests.gateway.test_gateway_outbound import Reloadable, answered, refused, reloadable_gateway
from tests.gateway.upstream import UpstreamProcess


def test_which_proxy_a_request_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for(None, "https", "api.example.com") is None
    assert proxy_for("http://egress:3128", "https", "api.example.com") == "http://egress:3128"
    assert proxy_for("env", "https", "api.example.com") is None  # no variables: straight to the host
    monkeypatch.setenv("HTTPS_PROXY", "http://secure-egress:3128")
    monkeypatch.setenv("ALL_PROXY", "http://any-egress:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.corp.example")
    assert proxy_for("env", "https", "api.example.com") == "http://secure-egress:3128"
    assert proxy_for("env", "http", "api.example.com") == "http://any-egress:3128"
    assert proxy_for("env", "https", "internal.example") is None
    assert proxy_for("env", "https", "mcp.corp.example") is None


@pytest.mark.parametrize("value", ["socks5://egress:1080", "egress:3128", "http://", "envv"])
def test_a_proxy_that_is_not_an_http_url_or_env_is_refused_at_load(value: str) -> None:
    with pytest.raises(ValidationError, match="proxy"):
        OutboundConfig(proxy=value)
    assert OutboundConfig(proxy="env").proxy == "env" and OutboundConfig(proxy="https://u:p@egress:8443").proxy


def _target() -> Starlette:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello from {request.url.path}")

    async def away(request: Request) -> RedirectResponse:
        return RedirectResponse(f"http://localhost:{request.url.port}/hello")

    return Starlette(routes=[Route("/hello", hello), Route("/away", away)])


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serve_in_thread(_target()) as url:
        yield url


@pytest.fixture
def proxy() -> Iterator[tuple[ForwardProxy, str]]:
    with forward_proxy() as served:
        yield served


def test_a_request_goes_through_the_proxy_and_refused_targets_never_reach_it(
        target: str, proxy: tuple[ForwardProxy, str]) -> None:
    spy, proxy_url = proxy
    # Only 127.0.0.1 of the private addresses: the proxy, on 127.0.0.1 too, is the operator's and not checked.
    policy = OutboundPolicy(allow_private=False, allowed_hosts=("127.0.0.1",), proxy=proxy_url)
    transport = guarded_httpx(lambda: policy)

    async def fetch(url: str, follow: bool = False) -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, follow_redirects=follow) as client:
            return await client.get(url)

    assert asyncio.run(fetch(f"{target}/hello")).text == "hello from /hello"
    assert spy.seen() == [f"GET {target}/hello"]
    port = httpx.URL(target).port
    with pytest.raises(UrlRefused, match="'localhost' resolves to"):
        asyncio.run(fetch(f"http://localhost:{port}/hello"))
    with pytest.raises(UrlRefused, match="'localhost' resolves to"):  # a redirect's hop is held to it too
        asyncio.run(fetch(f"{target}/away", follow=True))
    assert spy.seen() == [f"GET {target}/hello", f"GET {target}/away"]  # the refused ones never left
    assert transport.refused is not None


def test_httpx2_goes_through_the_proxy_too(target: str, proxy: tuple[ForwardProxy, str]) -> None:
    spy, proxy_url = proxy
    transport = outbound_transport(httpx2, lambda: OutboundPolicy(proxy=proxy_url))

    async def fetch() -> str:
        async with httpx2.AsyncClient(transport=transport) as client:
            return (await client.get(f"{target}/hello")).text

    assert asyncio.run(fetch()) == "hello from /hello" and spy.seen() == [f"GET {target}/hello"]


@pytest.fixture(scope="module")
def mcp() -> Iterator[McpSpy]:
    with mcp_server() as server:
        yield server


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloadable]:
    with reloadable_gateway(upstream_processes[0], tmp_path_factory.mktemp("outbound-proxy")) as gateway:
        yield gateway


def test_mcp_calls_and_webhooks_go_through_the_gateway_proxy(
        gw: Reloadable, mcp: McpSpy, proxy: tuple[ForwardProxy, str]) -> None:
    spy, proxy_url = proxy
    gw.outbound(proxy=proxy_url)
    assert answered(gw, mcp.url) == ["mcp_list_tools", "mcp_call", "message"]
    through = spy.seen()
    assert through and all(seen == f"POST {mcp.url}" for seen in through)  # every MCP request went through it
    receiver = Receiver()
    with serve_in_thread(receiver.app()) as url, gw.client() as client:
        endpoint = client.webhooks.create(name="proxied", url=f"{url}/hook", event_types=["response.completed"])
        tested = client.post(f"/webhook_endpoints/{endpoint.id}/test", body={"event_type": "response.completed"},
                             cast_to=object)
        assert tested["success"] and len(receiver.posts) == 1  # type: ignore[index]
        assert spy.seen()[-1] == f"POST {url}/hook"
        gw.outbound(proxy=proxy_url, denied_hosts=["127.0.0.1"])  # the rules still hold, before the proxy
        before = len(spy.seen())
        refused(gw, mcp.url, "denied_hosts")
        assert len(spy.seen()) == before
        gw.outbound()  # no proxy: straight to the host again
        assert answered(gw, mcp.url) == ["mcp_list_tools", "mcp_call", "message"]
        assert len(spy.seen()) == before


def test_a_proxy_that_is_down_is_the_calls_failure_not_a_hang(gw: Reloadable, mcp: McpSpy) -> None:
    gw.outbound(proxy="http://127.0.0.1:9")  # nothing listens on the discard port
    with gw.client() as client, pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model="up", input="[tools:1] Oslo",
                                tools=[{"type": "mcp", "server_label": "weather", "server_url": mcp.url,  # type: ignore[list-item]
                                        "require_approval": "never"}])
    body: dict = failed.value.body  # type: ignore[assignment]
    assert failed.value.status_code == 424 and (body["param"], body["code"]) == ("tools[0].server_url",
                                                                                 "mcp_list_tools_failed")
    gw.outbound()
