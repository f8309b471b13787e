"""Routers by name: what a route group's `router:` field names."""

from __future__ import annotations

from collections.abc import Callable

from routers.base import Router
from routers.tier_prior import TierPriorRouter

ROUTERS: dict[str, Callable[..., Router]] = {"tier-prior": TierPriorRouter}


def make_router(name: str, artifact: str | None = None) -> Router:
    try:
        factory = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}") from None
    return factory(artifact) if artifact else factory()
