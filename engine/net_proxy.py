"""Where a client URL's connection goes: straight to its host (the default), or through an egress proxy,
as `outbound.proxy` says: a proxy's URL (every such connection through it), or "env" (the usual HTTP_PROXY,
HTTPS_PROXY and ALL_PROXY variables, and NO_PROXY's exceptions, read when each request is sent, with the
standard library's rules). Through a proxy the policy is held on the target before the request is sent
(its name, and the addresses it resolves to here); the proxy makes the connection and resolves the name
again itself, so a proxy should hold its own egress rules too (engine/net_transport.py)."""

from __future__ import annotations

import urllib.request

ENV = "env"


def proxy_for(setting: str | None, scheme: str, host: str) -> str | None:
    """The proxy a request to `scheme://host` goes through under `setting`; None: straight to the host."""
    if setting is None:
        return None
    if setting != ENV:
        return setting
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return proxies.get(scheme) or proxies.get("all")


def check_proxy_setting(value: str) -> str:
    """"env", or an http(s) proxy URL with a host; ValueError naming what is wrong."""
    if value == ENV:
        return value
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.split("/")[0].rsplit("@", 1)[-1]:
        raise ValueError(f"{value!r} is neither 'env' nor an http:// or https:// proxy URL")
    return value
