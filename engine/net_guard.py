"""Where a URL a client hands us may lead (SSRF): which hosts it may name and which addresses they may resolve to,
so that a client cannot make the process reach what only it can (a cloud's metadata address 169.254.169.254,
localhost admin ports, internal services). One implementation for the gateway's `outbound:` section (a remote
MCP tool's `server_url`, a webhook's `url`: gateway/outbound_config.py) and the engine's image fetches
(engine/image_fetch.py, `--allow-private-media-urls`); here so that the engine needs nothing from gateway/.

The addresses are checked on connecting, on every connection (so on every redirect), and the
connection goes to the address checked (engine/net_transport.py): a name that resolves to a public
address when a request is read and to 127.0.0.1 a moment later (DNS rebinding) still cannot reach it.
IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) are judged as the IPv4 address they carry, and numeric
forms such as 2130706433 as the address the resolver makes of them."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import anyio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

class RuleNames(NamedTuple):
    """The settings a refusal names, so the client (and the operator reading it) knows which rule said no."""

    allow_private: str = "outbound.allow_private"
    allowed_hosts: str = "outbound.allowed_hosts"
    denied_hosts: str = "outbound.denied_hosts"
    owner: str = "the gateway's"


class RulesConfig(Protocol):
    """The gateway's `outbound:` section as this module reads it (gateway/outbound_config.py)."""

    allow_private: bool
    allowed_hosts: list[str]
    allowed_hosts_only: bool
    denied_hosts: list[str]
    proxy: str | None


# Refused unless `allow_private`: where a gateway's own services live.
PRIVATE_KINDS = frozenset({"loopback", "private", "carrier-grade NAT", "unique-local", "non-public"})
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host": 0.0.0.0 reaches the gateway's own ports
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


class UrlRefused(Exception):
    """A URL (or the address its host resolves to) the policy refuses; `reason` says why, for the client."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host!r} {reason}")
        self.host, self.reason = host, reason


def refusal_of(exc: BaseException) -> UrlRefused | None:
    """The policy's refusal behind `exc`, however a client library wrapped it (a cause, a task group's
    exception group); None where there is none."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UrlRefused):
            return current
        if isinstance(current, BaseExceptionGroup):
            todo += current.exceptions
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return None


def address_kind(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is (None: a public one); a v4-mapped v6 address as its v4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:  # 169.254/16 (the clouds' metadata address), fe80::/10
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:  # 240/4, 255.255.255.255: before is_private, which holds them too
        return "reserved"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_private:
        return "private"
    return None if ip.is_global else "non-public"


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """`host` (lower case) is a pattern, or a name under a `*.example.com` one."""
    return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in patterns)


def normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class OutboundPolicy:
    """The rules of `outbound:` (gateway/outbound_config.py), or of the engine's media flags (`names` say which);
    the default is the section's default."""

    allow_private: bool = True
    allowed_hosts: tuple[str, ...] = ()
    allowed_hosts_only: bool = False
    denied_hosts: tuple[str, ...] = ()
    names: RuleNames = RuleNames()
    proxy: str | None = None  # an egress proxy's URL, "env", or None: straight to the host (engine/net_proxy.py)

    @classmethod
    def of(cls, config: RulesConfig) -> OutboundPolicy:
        return cls(config.allow_private, tuple(config.allowed_hosts), config.allowed_hosts_only,
                   tuple(config.denied_hosts), proxy=config.proxy)

    def trusted(self, host: str) -> bool:
        """Whether `host` may be reached whatever it resolves to (allowed_hosts names it); UrlRefused where
        its name alone is refused."""
        name = normal_host(host)
        if host_matches(name, self.denied_hosts):
            raise UrlRefused(host, f"is among {self.names.owner} {self.names.denied_hosts}")
        if host_matches(name, self.allowed_hosts):
            return True
        if self.allowed_hosts_only:
            raise UrlRefused(host, f"is not among {self.names.owner} {self.names.allowed_hosts}")
        ip = _literal(name)
        if ip is not None:
            self.check_address(host, ip)
        return False

    def check_address(self, host: str, ip: IPAddress) -> None:
        kind = address_kind(ip)
        if kind is None or (kind in PRIVATE_KINDS and self.allow_private):
            return
        why = (f"{self.names.allow_private} is false" if kind in PRIVATE_KINDS
               else f"never reached unless {self.names.allowed_hosts} names the host")
        said = "is" if _literal(normal_host(host)) == ip else f"resolves to {ip},"
        raise UrlRefused(host, f"{said} a {kind} address ({why})")

    async def addresses(self, host: str, port: int, timeout_s: float | None = None) -> list[str] | None:
        """The addresses to connect to for `host`, each checked (any one refused refuses them all: a name
        must not lead to a private address on a second try); None for a trusted host, connected as named."""
        if self.trusted(host):
            return None
        literal = _literal(normal_host(host))
        if literal is not None:  # checked by `trusted`; no lookup (a thread's hop) for an address
            return [str(literal)]
        with anyio.fail_after(timeout_s):
            found = await anyio.getaddrinfo(normal_host(host), port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in found))
        for address in addresses:
            self.check_address(host, ipaddress.ip_address(address))
        return addresses

    def check_url(self, url: str) -> None:
        """The URL's name checked before anything is connected (its addresses are checked on connecting)."""
        import httpx

        self.trusted(httpx.URL(url).host)
