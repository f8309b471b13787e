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

The windows live in this process: each gateway replica keeps its own, so N replicas may together send up
to N times a quota (give each replica its share of it)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.backends.base import BackendError

WINDOW_S = 60.0
Limit = Literal["rpm", "tpm"]
RATE_LIMITED_CODE = "deployment_rate_limited"


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
    so a check and the take that follows it in the same step of the event loop are atomic."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic,
                 window_s: float = WINDOW_S) -> None:
        assert rpm is None or rpm > 0
        assert tpm is None or tpm > 0
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self.clock = clock
        self._counted: deque[Counted] = deque()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._counted and self._counted[0].started <= now - self.window_s:
            gone = self._counted.popleft()
            gone.in_window = False
            self._tokens -= gone.tokens

    def usage(self) -> tuple[int, int]:
        """(requests, tokens) in the window now."""
        self._expire(self.clock())
        return len(self._counted), self._tokens

    def at_limit(self, tokens: int) -> AtLimit | None:
        """Whether a request of `tokens` (its prompt's estimate) must go elsewhere, and until when."""
        now = self.clock()
        self._expire(now)
        rpm_free_in = tpm_free_in = None
        if self.rpm is not None and len(self._counted) >= self.rpm:
            rpm_free_in = self._counted[len(self._counted) - self.rpm].started + self.window_s - now
        if self.tpm is not None and self._tokens and self._tokens + tokens > self.tpm:
            tpm_free_in = self._tokens_free_in(tokens, now)
        if rpm_free_in is None and tpm_free_in is None:
            return None
        return AtLimit("rpm" if rpm_free_in is not None else "tpm", max(rpm_free_in or 0.0, tpm_free_in or 0.0))

    def _tokens_free_in(self, tokens: int, now: float) -> float:
        assert self.tpm is not None
        left = self._tokens
        for counted in self._counted:  # oldest first: the tokens leave in this order
            left -= counted.tokens
            if left == 0 or left + tokens <= self.tpm:
                return counted.started + self.window_s - now
        return self.window_s  # unreachable: the last one leaving empties the window

    def take(self, tokens: int) -> Counted:
        counted = Counted(self.clock(), max(tokens, 0))
        self._counted.append(counted)
        self._tokens += counted.tokens
        return counted

    def settle(self, counted: Counted, tokens: int) -> None:
        """The request ended having used `tokens`: its count corrected (if it is still in the window)."""
        if counted.in_window:
            self._tokens += tokens - counted.tokens
        counted.tokens = tokens


def make_window(rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> DeploymentWindow | None:
    return None if rpm is None and tpm is None else DeploymentWindow(rpm, tpm, clock)


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
