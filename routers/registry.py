"""Routers by name: what a route group's `router:` field names.

"tier-prior" needs no artifact. Every learned family (routers/families.py) is loaded from the group's
`router_artifact` (routers/artifact.py). A learned router whose artifact is not given, missing or
unreadable falls back to the tier prior with a logged warning: routing degrades, the gateway keeps
serving. Learned families are imported only when one is used (scikit-learn, LightGBM, torch)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from routers.base import Router
from routers.tier_prior import TierPriorRouter

log = logging.getLogger("pitstop.routers")

LEARNED_FAMILIES = ("pitstop", "knn", "mlp", "rorf", "logistic", "lightgbm", "mf", "zero", "random")


def _tier_prior(artifact: str | None = None) -> Router:
    return TierPriorRouter()


def _learned(family: str, artifact: str | None = None) -> Router:
    if not artifact:
        log.warning("router %s has no router_artifact; falling back to tier-prior", family)
        return TierPriorRouter()
    from routers.artifact import load_router  # noqa: PLC0415  (heavy imports only when used)

    try:
        router = load_router(artifact)
    except (OSError, ValueError, EOFError, ImportError, AttributeError, KeyError) as error:
        log.warning("router %s: cannot load artifact %s (%s); falling back to tier-prior", family, artifact, error)
        return TierPriorRouter()
    if router.family != family:
        log.warning("router %s: artifact %s holds family %r; using it as trained", family, artifact, router.family)
    return router


ROUTERS: dict[str, Callable[..., Router]] = {
    "tier-prior": _tier_prior,
    **{family: partial(_learned, family) for family in LEARNED_FAMILIES},
}


def make_router(name: str, artifact: str | None = None) -> Router:
    try:
        factory = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {sorted(ROUTERS)}") from None
    return factory(artifact)
