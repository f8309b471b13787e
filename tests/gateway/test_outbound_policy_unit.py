"""The outbound URL policy's parts (gateway/outbound_policy.py, gateway/outbound_transport.py): how an address
is classed (v4, v6, IPv4-mapped v6, numeric forms the resolver reads), host patterns, the config section,
and the transport's backend, which connects to the address it checked (a rebinding name gets no second
answer) and checks every connection a client opens, a redirect's too, over real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpx
import httpx2
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route

from gateway.outbound_config import OutboundConfig
from gateway.outbound_policy import OutboundPolicy, UrlRefused, address_kind, refusal_of
from gateway.outbound_transport import GuardedBackend, guard
from tests.engine.serving import serve_in_thread

STRICT = OutboundPolicy(allow_private=False)


@pytest.mark.parametrize(("address", "kind"), [
    ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("::ffff:8.8.8.8", None),
    ("127.0.0.1", "loopback"), ("127.8.9.1", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"), ("fd12:3456::1", "unique-local"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    # IPv4-mapped IPv6: judged as the IPv4 address they carry (169.254.169.254 is not merely "private")
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "private"),
])
def test_addresses_are_classed(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "0177.0.0.1", "::ffff:127.0.0.1"])
def test_loopback_in_any_spelling_is_refused_when_private_addresses_are(host: str) -> None:
    with pytest.raises(UrlRefused, match="loopback"):
        asyncio.run(STRICT.addresses(host, 80))
    assert asyncio.run(OutboundPolicy().addresses(host, 80))  # the default reaches them


def test_a_decimal_url_is_judged_by_the_address_it_names() -> None:
    STRICT.check_url("http://2130706433/")  # the name passes; the resolver makes 127.0.0.1 of it
    with pytest.raises(UrlRefused, match="resolves to 127.0.0.1"):
        asyncio.run(STRICT.addresses(httpx.URL("http://2130706433/").host, 80))


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://0.0.0.0:8000/",
                                 "http://[::ffff:169.254.169.254]/", "http://224.0.0.1/"])
def test_metadata_and_other_special_addresses_are_refused_by_default(url: str) -> None:
    with pytest.raises(UrlRefused, match="never reached unless outbound.allowed_hosts"):
        OutboundPolicy().check_url(url)


def test_host_lists() -> None:
    policy = OutboundPolicy.of(OutboundConfig(allow_private=False, allowed_hosts=["*.Internal.Example.", "127.0.0.1"],
                                              denied_hosts=["secret.internal.example"]))
    assert asyncio.run(policy.addresses("mcp.internal.example", 443)) is None  # trusted: connected as named
    assert asyncio.run(policy.addresses("a.b.internal.example", 443)) is None
    assert asyncio.run(policy.addresses("127.0.0.1", 80)) is None
    assert not policy.trusted("internal.example") and not policy.trusted("badinternal.example")  # looked up
    for refused, why in [("secret.internal.example", "denied_hosts"), ("[::1]", "loopback")]:
        with pytest.raises(UrlRefused, match=why):
            asyncio.run(policy.addresses(refused, 80))
    only = OutboundPolicy(allowed_hosts=("api.example.com",), allowed_hosts_only=True)
    with pytest.raises(UrlRefused, match="not among the gateway's outbound.allowed_hosts"):
        only.check_url("https://8.8.8.8/")
    only.check_url("https://API.example.com./mcp")


@pytest.mark.parametrize("bad", [{"allowed_hosts": ["*"]}, {"denied_hosts": ["a.*.example"]}, {"allowed_hosts": ["10.0.0.0/8"]},
                                 {"allowed_hosts": [""]}, {"allow_privates": True}])
def test_a_bad_section_is_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        OutboundConfig(**bad)


class Recording:
    """A network backend that connects nowhere: it notes the hosts it was asked for."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: Any) -> str:
        self.hosts.append(host)
        return "stream"

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_the_backend_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])  # a rebinding name: public first, loopback next

    async def resolve(host: str, port: int, **kwargs: Any) -> list:
        return [(2, 1, 6, "", (address, port)) for address in next(answers)]

    monkeypatch.setattr("engine.net_guard.anyio.getaddrinfo", resolve)
    inner = Recording()
    backend = GuardedBackend(inner, lambda: STRICT)

    async def connect_twice() -> None:
        await backend.connect_tcp("rebind.example", 80)
        with pytest.raises(UrlRefused, match="resolves to 127.0.0.1"):
            await backend.connect_tcp("rebind.example", 80)

    asyncio.run(connect_twice())
    assert inner.hosts == ["93.184.215.14"]  # never the name, which a second lookup could answer otherwise
    assert isinstance(backend.refused, UrlRefused)


def _redirector(seen: list[str]) -> Starlette:
    async def hop(request: Request) -> RedirectResponse:
        seen.append("hop")
        return RedirectResponse(request.query_params["to"], status_code=307)

    async def end(request: Request) -> PlainTextResponse:
        seen.append("end")
        return PlainTextResponse("reached")

    return Starlette(routes=[Route("/hop", hop), Route("/end", end)])


@pytest.mark.parametrize("library", [httpx, httpx2])
def test_a_redirect_to_a_refused_host_is_refused(library: Any) -> None:
    seen: list[str] = []
    with serve_in_thread(_redirector(seen)) as url:  # on 127.0.0.1
        port = httpx.URL(url).port
        hop = f"{url}/hop?to=http://localhost:{port}/end"  # allowed host -> a name resolving to loopback

        async def get(policy: OutboundPolicy) -> str:
            transport = library.AsyncHTTPTransport(trust_env=False)
            guard(transport, lambda: policy)
            async with library.AsyncClient(transport=transport, follow_redirects=True) as client:
                return (await client.get(hop)).text

        with pytest.raises(UrlRefused, match="'localhost' resolves to"):
            asyncio.run(get(OutboundPolicy(allow_private=False, allowed_hosts=("127.0.0.1",))))
        assert seen == ["hop"]
        assert asyncio.run(get(OutboundPolicy(allow_private=False, allowed_hosts=("127.0.0.1", "localhost")))) == "reached"
        assert seen == ["hop", "hop", "end"]


@pytest.mark.parametrize("library", [httpx, httpx2])
def test_a_name_that_does_not_resolve_is_the_clients_connect_error(library: Any) -> None:
    async def get() -> None:
        transport = library.AsyncHTTPTransport(trust_env=False)
        guard(transport, OutboundPolicy)
        async with library.AsyncClient(transport=transport) as client:
            await client.get("http://no-such-host.invalid/")

    with pytest.raises(library.ConnectError, match="looking up 'no-such-host.invalid' failed"):
        asyncio.run(get())


def test_a_refusal_is_found_inside_what_wraps_it() -> None:
    refused = UrlRefused("x", "is refused")
    try:
        try:
            raise refused
        except UrlRefused as exc:
            raise RuntimeError("the connection closed") from exc
    except RuntimeError as wrapped:
        assert refusal_of(ExceptionGroup("task group", [ValueError(), wrapped])) is refused
    assert refusal_of(RuntimeError("other")) is None
