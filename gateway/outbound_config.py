"""The `outbound:` section: what the URLs API clients hand the gateway may reach (gateway/outbound_policy.py)."""

from __future__ import annotations

from pydantic import field_validator

from engine.net_proxy import check_proxy_setting
from gateway.strict_config import StrictConfig


class OutboundConfig(StrictConfig):
    """A remote MCP tool's `server_url` and a webhook endpoint's `url` are fetched by the gateway itself, from
    inside its network: these say where they may lead (README, "Outbound URLs")."""

    # Loopback, private (RFC 1918), carrier-grade NAT (100.64/10) and unique-local IPv6 addresses: true (the
    # default) lets clients reach them, as the embedded gateway's local MCP servers need; a public gateway
    # sets false. Link-local (the clouds' metadata address 169.254.169.254), multicast, unspecified and
    # reserved addresses are refused either way.
    allow_private: bool = True
    # Hosts reached whatever they resolve to (exact names or IP literals, or `*.example.com` for any name
    # under it): the exceptions to the address rules, e.g. the one internal MCP server clients may use.
    allowed_hosts: list[str] = []
    allowed_hosts_only: bool = False  # true: a host not in allowed_hosts is refused (an allowlist)
    denied_hosts: list[str] = []  # always refused, whatever allowed_hosts says
    # An egress proxy these connections go through (an http(s) URL), "env" (HTTP(S)_PROXY / ALL_PROXY and
    # NO_PROXY, as read when each is sent), or None: straight to the host (engine/net_proxy.py). Through a
    # proxy the rules above hold on the target before anything is sent; the proxy resolves it again.
    proxy: str | None = None

    @field_validator("proxy")
    @classmethod
    def _a_proxy(cls, value: str | None) -> str | None:
        return None if value is None else check_proxy_setting(value)

    @field_validator("allowed_hosts", "denied_hosts")
    @classmethod
    def _host_patterns(cls, hosts: list[str]) -> list[str]:
        patterns = []
        for host in hosts:
            name = host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
            bare = name.removeprefix("*.")
            if not bare or "*" in bare or "/" in bare or " " in bare:
                raise ValueError(f"{host!r} is not a host name, an IP address or a '*.example.com' pattern")
            patterns.append(name)
        return patterns
