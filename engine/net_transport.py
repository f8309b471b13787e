"""httpx (and httpx2, the `mcp` package's) transports that connect only where the outbound policy allows
(engine/net_guard.py): the connection pool's network backend resolves the host itself, checks
every address, and connects to a checked address, so the check and the connection see the same address
(no second lookup a rebinding name could answer differently). The request's Host header and TLS's server
name stay the URL's host (the pool sets them, not the backend). Every connection a client opens goes
through the backend, a redirect's too, so a redirect to a refused host is refused. A client given one of
these transports reads no proxy from the environment (httpx's rule for an explicit transport): the
addresses checked are the ones connected to. Where the policy names an egress proxy (engine/net_proxy.py),
`OutboundTransport` sends a request through it once its target passed the policy, name and addresses.

No library fits: the SSRF filters for httpx on PyPI are young single-author packages, and none knows
httpx2; httpcore's network backend is the one seam both clients share."""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from engine.net_guard import OutboundPolicy, UrlRefused
from engine.net_proxy import proxy_for


class GuardedBackend:
    """An httpcore (or httpcore2) network backend that connects only to the addresses the policy allows."""

    def __init__(self, inner: Any, policy: Callable[[], OutboundPolicy]) -> None:
        self.inner, self.policy = inner, policy
        self.refused: UrlRefused | None = None  # the last refusal, for a caller whose library hides it
        # The inner backend's library (httpcore or httpcore2): a failed lookup is its ConnectError, as a
        # lookup inside its own connect is, so the client maps it to its own (httpx.ConnectError).
        self.library = importlib.import_module(type(inner).__module__.split(".")[0])

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> Any:
        try:
            addresses = await self.policy().addresses(host, port, timeout)
        except UrlRefused as refused:
            self.refused = refused
            raise
        except TimeoutError as exc:
            raise self.library.ConnectTimeout(f"looking up {host!r} took too long") from exc
        except OSError as exc:  # socket.gaierror: no such name
            raise self.library.ConnectError(f"looking up {host!r} failed: {exc}") from exc
        if addresses is None:  # a trusted host: connected as named
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        for i, address in enumerate(addresses):  # in the resolver's order, as a plain connect tries them
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except Exception:
                if i == len(addresses) - 1:
                    raise
        raise OSError(f"{host!r} resolved to no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> Any:
        raise UrlRefused(path, "is a Unix socket, which a client's URL never reaches")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guard(transport: Any, policy: Callable[[], OutboundPolicy]) -> GuardedBackend:
    """Puts the policy's backend into an httpx or httpx2 AsyncHTTPTransport made without a proxy; the
    backend (its `refused` tells what it refused last)."""
    pool = transport._pool  # noqa: SLF001 (neither transport takes a network backend: the pool does)
    inner = getattr(pool, "_network_backend", None)
    if inner is None or type(pool).__name__ != "AsyncConnectionPool":  # a proxy, or a changed httpcore: fail loudly
        raise TypeError(f"cannot guard a {type(pool).__name__}")
    backend = GuardedBackend(inner, policy)
    pool._network_backend = backend  # noqa: SLF001
    return backend


class _Outbound:
    """A transport of `lib` (httpx or httpx2) under the policy: straight to the target on a guarded pool, or,
    where the policy names a proxy for it, through a pool for that proxy once the target passed the policy.
    The policy is read on every request, so a reload's rules (and proxy) hold from the next one."""

    lib: Any

    def __init__(self, policy: Callable[[], OutboundPolicy], verify: ssl.SSLContext | bool = True,
                 **options: Any) -> None:
        self.policy, self.verify, self.options = policy, verify, options
        self.direct = self.lib.AsyncHTTPTransport(verify=verify, trust_env=False, **options)
        self.backend = guard(self.direct, policy)
        self._proxied: dict[str, Any] = {}
        self._refused: UrlRefused | None = None

    @property
    def refused(self) -> UrlRefused | None:
        """The last refusal, for a caller whose library hides it."""
        return self._refused or self.backend.refused

    async def handle_async_request(self, request: Any) -> Any:
        policy, url = self.policy(), request.url
        proxy = proxy_for(policy.proxy, url.scheme, url.host)
        if proxy is None:
            return await self.direct.handle_async_request(request)
        try:
            await policy.addresses(url.host, url.port or (443 if url.scheme == "https" else 80))
        except UrlRefused as refused:
            self._refused = refused
            raise
        except TimeoutError as exc:
            raise self.lib.ConnectTimeout(f"looking up {url.host!r} took too long", request=request) from exc
        except OSError as exc:  # socket.gaierror: no such name
            raise self.lib.ConnectError(f"looking up {url.host!r} failed: {exc}", request=request) from exc
        if proxy not in self._proxied:
            self._proxied[proxy] = self.lib.AsyncHTTPTransport(proxy=proxy, verify=self.verify, trust_env=False,
                                                               **self.options)
        return await self._proxied[proxy].handle_async_request(request)

    async def aclose(self) -> None:
        for transport in (self.direct, *self._proxied.values()):
            await transport.aclose()


class HttpxOutbound(_Outbound, httpx.AsyncBaseTransport):
    lib = httpx


def outbound_transport(lib: Any, policy: Callable[[], OutboundPolicy], verify: ssl.SSLContext | bool = True,
                       **options: Any) -> Any:
    """An `_Outbound` transport of `lib` (httpx, or the mcp package's httpx2)."""
    if lib is httpx:
        return HttpxOutbound(policy, verify, **options)
    kind = type(f"{lib.__name__.capitalize()}Outbound", (_Outbound, lib.AsyncBaseTransport), {"lib": lib})
    return kind(policy, verify, **options)


def guarded_httpx(policy: Callable[[], OutboundPolicy], verify: ssl.SSLContext | bool = True,
                  **options: Any) -> HttpxOutbound:
    """An httpx transport (`options`: AsyncHTTPTransport's, `limits` say) under the policy."""
    return HttpxOutbound(policy, verify, **options)
