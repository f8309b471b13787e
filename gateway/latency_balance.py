"""Latency-aware balancing over a model's deployments (`server.routing_strategy: latency`): each request
goes where it should wait least, the deployment with the lowest `latency x (outstanding + 1)`, where
`latency` is a peak-EWMA of that deployment's speed, as Finagle's and Linkerd's balancers weigh their
endpoints. Streams and whole answers are weighed apart, each by what its client waits for: a stream by
its time to the first chunk, a whole answer by its seconds per output token (its time grows with the
answer's length, which is the request's doing, not the deployment's); other calls by their time.

- Peak: a sample above the average replaces it at once, so a deployment that slows down is avoided from its
  next request on; one below it pulls the average down with a time constant `tau_s` (10 s), so one fast
  answer does not bring a slow deployment back.
- A deployment never measured costs nothing: it is tried first, once, and then weighed like the others.
- A deployment the others have kept busy does not stay avoided for good: with no sample for a while its
  average decays toward the cheapest measured one's (time constant `probe_tau_s`, 30 s), so it is asked
  again now and then and, if it has recovered, taken back.

With equal latencies this is least outstanding requests (the default strategy's rule); with unequal ones it
keeps the slow deployment for the overflow: a deployment 6x slower gets requests only while the fast one
has 6 or more in flight."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

RoutingStrategy = Literal["least-outstanding", "latency"]
ROUTING_STRATEGIES: tuple[RoutingStrategy, ...] = ("least-outstanding", "latency")
TAU_S = 10.0
PROBE_TAU_S = 30.0


@dataclass
class PeakEwma:
    """One deployment's first-byte latency, in seconds."""

    value: float | None = None
    at: float = 0.0  # when the last sample came

    def observe(self, seconds: float, now: float, tau_s: float = TAU_S) -> None:
        if self.value is None or seconds >= self.value:
            self.value = seconds
        else:
            keep = math.exp(-max(now - self.at, 0.0) / tau_s)
            self.value = seconds + (self.value - seconds) * keep
        self.at = now


def measure_of(kind: str, streaming: bool) -> str:
    """What a call of this kind is weighed by: see the module's docstring."""
    if streaming:
        return "stream"
    return "whole" if kind in ("chat", "completion") else kind


def speed(measure: str, seconds: float, completion_tokens: int | None) -> float | None:
    """One call's value of `measure` (None: nothing to learn from it, a whole answer without usage)."""
    if measure != "whole":
        return seconds
    return seconds / completion_tokens if completion_tokens else None


@dataclass
class LatencyBalancer:
    tau_s: float = TAU_S
    probe_tau_s: float = PROBE_TAU_S
    latencies: dict[tuple[str, str], PeakEwma] = field(default_factory=dict)  # (deployment, measure) ->

    def observe(self, deployment: str, measure: str, value: float, now: float) -> None:
        self.latencies.setdefault((deployment, measure), PeakEwma()).observe(max(value, 0.0), now, self.tau_s)

    def latency(self, deployment: str, measure: str, now: float, floor: float | None) -> float:
        """The average a choice weighs now: 0 where never measured; one not measured for a while drifts
        toward `floor`, the cheapest measured one's."""
        ewma = self.latencies.get((deployment, measure))
        if ewma is None or ewma.value is None:
            return 0.0
        if floor is None or ewma.value <= floor:
            return ewma.value
        return floor + (ewma.value - floor) * math.exp(-max(now - ewma.at, 0.0) / self.probe_tau_s)

    def choose(self, names: Sequence[str], measure: str, outstanding: Callable[[str], int], now: float) -> str:
        """The name among `names` (not empty) with the lowest expected wait; ties to the first."""
        measured = [e.value for n in names if (e := self.latencies.get((n, measure))) is not None
                    and e.value is not None]
        floor = min(measured, default=None)
        return min(names, key=lambda n: self.latency(n, measure, now, floor) * (outstanding(n) + 1))

    def report(self) -> dict[str, float]:
        """The averages, as `deployment/measure` -> seconds (or seconds a token)."""
        return {f"{name}/{measure}": e.value for (name, measure), e in self.latencies.items() if e.value is not None}
