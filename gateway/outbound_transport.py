"""The httpx / httpx2 transports that connect only where the outbound policy allows: engine/net_transport.py,
shared with the engine's image fetches (one implementation), named here for the gateway's modules."""

from engine.net_transport import GuardedBackend, guard, guarded_httpx

__all__ = ["GuardedBackend", "guard", "guarded_httpx"]
