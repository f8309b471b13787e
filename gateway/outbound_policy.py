"""The gateway's outbound URL policy (`outbound:` in the config, gateway/outbound_config.py): which hosts a URL
that an API client hands the gateway may name (a remote MCP tool's `server_url`, a webhook endpoint's `url`) and
which addresses they may resolve to. The rules themselves live in engine/net_guard.py, shared with the engine's
image fetches (one implementation); this module adds the gateway's reloadable holder and its 400."""

from __future__ import annotations

from engine.net_guard import (
    PRIVATE_KINDS,
    IPAddress,
    OutboundPolicy,
    RuleNames,
    UrlRefused,
    address_kind,
    host_matches,
    normal_host,
    refusal_of,
)
from engine.server.errors import APIError

__all__ = ["PRIVATE_KINDS", "IPAddress", "OutboundPolicy", "OutboundRules", "RuleNames", "UrlRefused",
           "address_kind", "host_matches", "normal_host", "refusal_of", "url_not_allowed"]


def url_not_allowed(refused: UrlRefused, param: str) -> APIError:
    """The client's 400, naming the field whose URL was refused and why."""
    return APIError(400, f"'{param}' may not be reached from this gateway: {refused}", param, "url_not_allowed")


class OutboundRules:
    """The policy in force, called for at each connection: a config reload swaps `current`
    (gateway/policy_reload.py), and the next connection is judged by the new one."""

    def __init__(self, policy: OutboundPolicy | None = None) -> None:
        self.current = policy or OutboundPolicy()

    def __call__(self) -> OutboundPolicy:
        return self.current
