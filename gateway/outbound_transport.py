"""The httpx / httpx2 transports that connect only where the outbound policy allows, through its egress proxy
where it names one: engine/net_transport.py, shared with the engine's image fetches (one implementation), named
here for the gateway's modules."""

from engine.net_transport import GuardedBackend, guard, guarded_httpx, outbound_transport

__all__ = ["GuardedBackend", "guard", "guarded_httpx", "outbound_transport"]
