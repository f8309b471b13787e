"""Requests in flight on a deployment its health checks take out (gateway/health_checks.py) are sent elsewhere.

A call sent before its deployment was found out waits on it until `request_timeout_s` (600 s by default)
where it hangs. When the probes take a deployment out, each call on it that has no first byte yet (a
stream's first chunk, a whole answer) is sent to another available deployment of its model, as a hedge is
(gateway/hedging.py: the first to answer wins, the other is cancelled and its connection closed). Not a
cancellation first: a probe may be wrong (a busy server slow to answer /models), and the first call may
still answer first. Where the model has no other deployment available and the request has a fallback
model left (gateway/fallbacks.py), the call is given up and the request goes down its chain; with neither,
it keeps waiting on its call. A call with its first byte is left alone (its answer is streaming). Only the
transition to "out" triggers it, once a request; no hedge budget is spent."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter

from gateway.backends.base import BackendError

# What a call waits on besides its answer: resolved once, when its deployment is taken out.
Outage = asyncio.Future[None]


class Rescues:
    """Counts each rescue by outcome: won / lost (the first call answered first) / failed / cancelled (the
    request ended otherwise) for a call sent; no_deployment (nothing else to ask: the request waits) and
    fallback (its chain's next model asked instead) for one that was due but not sent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.rescues = Counter("pitstop_health_rescues", "Calls in flight on a deployment its health checks took "
                               "out, sent elsewhere, by outcome", ["model", "outcome"], registry=registry)

    def count(self, model: str, outcome: str) -> None:
        self.rescues.labels(model, outcome).inc()


def deployment_down(name: str) -> BackendError:
    """The call on `name` given up for the request's fallback model: retryable, so the chain goes on."""
    return BackendError(503, f"deployment {name!r} was taken out by its health checks while the request waited",
                        retryable=True, code="deployment_down")
