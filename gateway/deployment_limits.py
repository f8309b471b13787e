"""Per-deployment rate limits: litellm's `rpm` / `tpm` in a deployment's `litellm_params`, the quota its
provider gives it. The pool (gateway/deployments.py) sends a request only where its deployment has
headroom, so traffic spreads over the deployments' quotas instead of drawing the provider's 429s; where
none of the model's has any, the request is a 429 of the gateway's own (`DeploymentsRateLimited`), which
the fallback chain takes to the next model (gateway/fallbacks.py). Nothing waits for headroom.

A sliding window of the last 60 s per deployment, as litellm's router keeps: requests as they start, and
tokens, the prompt's estimate as the request starts, corrected to the answer's usage (prompt +
completion) as it ends. A deployment is at its limit when its window holds `rpm` requests, or when this
request's estimate would take the window's tokens past `tpm`; an empty window takes any request, so one
larger than the whole quota is sent rather than refused for ever.

Without `redis_url` the windows live in this process: each gateway replica keeps its own, so N replicas
may together send up to N times a quota (give each replica its share of it). With `redis_url` the
replicas share them (gateway/deployment_limits_sync.py): each counts here and a background sync every
0.25 s writes its counts to Redis and reads the others', which the check adds to this window (they may
lag by two sync intervals: the replicas may pass a quota by what the others start in that time); with
Redis away each replica falls back to its own window. The request path never waits for Redis."""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gateway.backends.base import BackendError

if TYPE_CHECKING:
    from gateway.deployments import DeploymentPool
    from gateway.model_list_config import ModelEntry

WINDOW_S = 60.0
Limit = Literal["rpm", "tpm"]
RATE_LIMITED_CODE = "deployment_rate_limited"
Leaving = tuple[float, int, int]  # (when it leaves the window on this replica's clock, requests, tokens)


@dataclass
class Counted:
    """One request in a window: when it started and the tokens it counts for (an estimate until it ends)."""

    started: float
    tokens: int
    in_window: bool = True


@dataclass(frozen=True)
class AtLimit:
    limit: Limit  # "rpm" where both are reached
    free_in_s: float  # when enough of the window has aged out for this request to fit


class DeploymentWindow:
    """A deployment's requests and tokens of the last `window_s` seconds. Every method is free of awaits,
    so a check and the take that follows it in the same step of the event loop are atomic.

    Where gateway replicas share the windows (`synced`, gateway/deployment_limits_sync.py), this replica
    also keeps its counts by wall-clock second (what the sync writes to Redis) and holds what the other
    replicas counted, as of the last sync, by when each second of theirs leaves the window."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic,
                 window_s: float = WINDOW_S, shared_id: str = "", synced: bool = False,
                 wall: Callable[[], float] = time.time) -> None:
        assert rpm is None or rpm > 0
        assert tpm is None or tpm > 0
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self.clock = clock
        self._counted: deque[Counted] = deque()
        self._tokens = 0
        self.shared_id, self.synced = shared_id, synced  # the deployment's name in Redis; whether it is synced
        # The wall clock less this one's, fixed: a request keeps its second however the two drift.
        self._wall_offset = wall() - clock()
        self._seconds: dict[int, list[int]] = {}  # wall-clock second -> [requests, tokens] of this replica's
        self._others: deque[Leaving] = deque()  # the other replicas' seconds, soonest to leave first
        self._others_requests = self._others_tokens = 0

    def _expire(self, now: float) -> None:
        while self._counted and self._counted[0].started <= now - self.window_s:
            gone = self._counted.popleft()
            gone.in_window = False
            self._tokens -= gone.tokens
        while self._others and self._others[0][0] <= now:
            _, requests, tokens = self._others.popleft()
            self._others_requests -= requests
            self._others_tokens -= tokens

    def usage(self) -> tuple[int, int]:
        """(requests, tokens) in the window now: this replica's, and the others' as of the last sync."""
        self._expire(self.clock())
        return len(self._counted) + self._others_requests, self._tokens + self._others_tokens

    def at_limit(self, tokens: int) -> AtLimit | None:
        """Whether a request of `tokens` (its prompt's estimate) must go elsewhere, and until when."""
        now = self.clock()
        self._expire(now)
        requests, used = len(self._counted) + self._others_requests, self._tokens + self._others_tokens
        rpm_free_in = tpm_free_in = None
        if self.rpm is not None and requests >= self.rpm:
            rpm_free_in = self._requests_free_in(requests, now)
        if self.tpm is not None and used and used + tokens > self.tpm:
            tpm_free_in = self._tokens_free_in(used, tokens, now)
        if rpm_free_in is None and tpm_free_in is None:
            return None
        return AtLimit("rpm" if rpm_free_in is not None else "tpm", max(rpm_free_in or 0.0, tpm_free_in or 0.0))

    def _leaving(self) -> Iterator[Leaving]:
        """What leaves the window, soonest first: this replica's requests and the other replicas' seconds."""
        mine = ((counted.started + self.window_s, 1, counted.tokens) for counted in self._counted)
        return heapq.merge(mine, self._others) if self._others else mine

    def _requests_free_in(self, requests: int, now: float) -> float:
        assert self.rpm is not None
        if not self._others:  # the common case, without the walk: the (requests - rpm + 1)th oldest leaving
            return self._counted[requests - self.rpm].started + self.window_s - now
        for leaves_at, gone, _ in self._leaving():
            requests -= gone
            if requests < self.rpm:
                return leaves_at - now
        return self.window_s  # unreachable: the last one leaving empties the window

    def _tokens_free_in(self, left: int, tokens: int, now: float) -> float:
        assert self.tpm is not None
        for leaves_at, _, gone in self._leaving():  # oldest first: the tokens leave in this order
            left -= gone
            if left <= 0 or left + tokens <= self.tpm:
                return leaves_at - now
        return self.window_s  # unreachable: the last one leaving empties the window

    def _second(self, started: float) -> list[int]:
        return self._seconds.setdefault(math.floor(started + self._wall_offset), [0, 0])

    def take(self, tokens: int) -> Counted:
        counted = Counted(self.clock(), max(tokens, 0))
        self._counted.append(counted)
        self._tokens += counted.tokens
        if self.synced:
            second = self._second(counted.started)
            second[0] += 1
            second[1] += counted.tokens
        return counted

    def settle(self, counted: Counted, tokens: int) -> None:
        """The request ended having used `tokens`: its count corrected (if it is still in the window)."""
        if counted.in_window:
            self._tokens += tokens - counted.tokens
            if self.synced:  # in the second it started in, which leaves the other replicas' windows with it
                self._second(counted.started)[1] += tokens - counted.tokens
        counted.tokens = tokens

    # ---- shared through Redis (gateway/deployment_limits_sync.py) ----------------------------------

    def oldest_second(self) -> int:
        """The first wall-clock second still (partly) in the window, on the offset this window's seconds
        are counted on (a wall clock stepped since shifts them all alike)."""
        return math.floor(self.clock() + self._wall_offset - self.window_s)

    def seconds(self, oldest: int) -> list[tuple[int, int, int]]:
        """This replica's (second, requests, tokens) from `oldest` on, what the sync writes; older ones go."""
        for second in [s for s in self._seconds if s < oldest]:
            del self._seconds[second]
        return [(second, requests, tokens) for second, (requests, tokens) in sorted(self._seconds.items())]

    def merge_others(self, others: Mapping[int, tuple[int, int]]) -> None:
        """What the other replicas counted, by wall-clock second, as the sync read it: each second counts
        until its end is `window_s` old (the latest any request in it may leave: never early)."""
        self.forget_others()
        for second, (requests, tokens) in sorted(others.items()):
            requests, tokens = max(requests, 0), max(tokens, 0)  # a lagging replica's clock, say
            if requests or tokens:
                self._others.append((second + 1 + self.window_s - self._wall_offset, requests, tokens))
                self._others_requests += requests
                self._others_tokens += tokens
        self._expire(self.clock())

    def forget_others(self) -> None:
        """Redis is away: this replica counts alone again (per-replica windows) until a sync answers."""
        self._others.clear()
        self._others_requests = self._others_tokens = 0


def make_window(rpm: int | None, tpm: int | None, clock: Callable[[], float], shared_id: str = "",
                synced: bool = False) -> DeploymentWindow | None:
    return None if rpm is None and tpm is None else DeploymentWindow(rpm, tpm, clock, shared_id=shared_id,
                                                                     synced=synced)


def shared_id(entry: ModelEntry, pool: DeploymentPool) -> str:
    """The deployment's name in Redis, the same on every replica: its model and provider deployment
    (model_name, litellm_params model, api_base and api_key, digested), and which of the alike it is."""
    params = entry.litellm_params
    digest = hashlib.sha256("\0".join((entry.model_name, params.model, params.api_base or "",
                                       params.api_key or "")).encode()).hexdigest()[:16]
    alike = sum(1 for d in pool.deployments if d.window is not None and d.window.shared_id.startswith(digest))
    return f"{digest}-{alike}"


def answered_tokens(usage: object) -> int | None:
    """prompt + completion tokens of an answer's `usage` (None where it has none)."""
    if not isinstance(usage, dict):
        return None
    total = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return total or int(usage.get("total_tokens") or 0) or None


class DeploymentsRateLimited(BackendError):
    """Every deployment of the model left to try is at its rpm or tpm: a 429 (OpenAI's shape) with a
    Retry-After of when the first of them has headroom again. Not retried on the model (none has room);
    a fallback model may answer instead."""

    def __init__(self, model_name: str, hits: Mapping[str, AtLimit]) -> None:
        assert hits
        free_in_s = max(min(hit.free_in_s for hit in hits.values()), 0.0)
        reached = ", ".join(f"{name} {hit.limit}" for name, hit in hits.items())
        super().__init__(429, f"every deployment of {model_name!r} is at its rate limit ({reached}); "
                         f"retry in {free_in_s:.1f}s", retryable=False, code=RATE_LIMITED_CODE,
                         retry_after_s=max(free_in_s, 1.0))
        self.hits = dict(hits)
        self.free_in_s = free_in_s

    @property
    def report(self) -> dict:
        """The outcome row's extra.deployment_limits for a request refused here."""
        return {"refused": {name: hit.limit for name, hit in self.hits.items()},
                "retry_after_s": round(self.free_in_s, 3)}
