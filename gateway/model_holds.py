"""Models whose engines the master key paused or put to sleep through the gateway (gateway/rl_admin.py): their
new requests wait here, before any deployment is picked, until the engines are resumed or fully awake.

The engines would hold them anyway (engine/pause.py), but a request waiting inside an engine holds an
upstream connection and an admission slot, starts a hedge on another engine as paused as the first
(gateway/hedging.py) and, once served, puts the pause into the model's latency samples (the hedge delay,
latency-aware balancing); one that outwaits its timeout there marks the deployment failed, which cools it
down for a while after it resumes. Waiting here does none of that. A request still held when its timeout
(`server.request_timeout_s`) runs out is a 503 `model_paused`, which a fallback chain may answer
(gateway/fallbacks.py). A hold lasts from the call that pauses (or puts to sleep) to the one that resumes
(or wakes the last memory), whatever each engine answered: it follows what the caller asked, and the
answers name the engines that did not follow. Each gateway replica holds its own callers' requests; the
engines hold those that other replicas send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.sleep import MEMORY_TAGS
from gateway.backends.base import BackendError


@dataclass
class _Hold:
    paused: bool = False
    asleep: set[str] = field(default_factory=set)
    released: asyncio.Event = field(default_factory=asyncio.Event)


class ModelHolds:
    def __init__(self) -> None:
        self._holds: dict[str, _Hold] = {}
        self.waiting: dict[str, int] = {}  # requests held now, by model (the gateway's /metrics)

    def reason(self, model: str) -> str | None:
        """"asleep", "paused", or None where the model's requests go on."""
        hold = self._holds.get(model)
        if hold is None:
            return None
        return "asleep" if hold.asleep else "paused"

    @property
    def held(self) -> dict[str, str]:
        return {model: reason for model in self._holds if (reason := self.reason(model)) is not None}

    def pause(self, models: Iterable[str]) -> None:
        for model in models:
            self._holds.setdefault(model, _Hold()).paused = True

    def sleep(self, models: Iterable[str]) -> None:
        for model in models:
            self._holds.setdefault(model, _Hold()).asleep.update(MEMORY_TAGS)

    def resume(self, models: Iterable[str]) -> None:
        for model in models:
            if (hold := self._holds.get(model)) is not None:
                hold.paused = False
                self._release_if_free(model, hold)

    def wake(self, models: Iterable[str], tags: Iterable[str] = MEMORY_TAGS) -> None:
        woken = set(tags)
        for model in models:
            if (hold := self._holds.get(model)) is not None:
                hold.asleep -= woken
                self._release_if_free(model, hold)

    def _release_if_free(self, model: str, hold: _Hold) -> None:
        if not hold.paused and not hold.asleep:
            del self._holds[model]
            hold.released.set()

    async def wait(self, model: str, timeout_s: float) -> float:
        """Returns once `model` is not held (the seconds waited); a 503 if `timeout_s` runs out first."""
        started = time.monotonic()
        self.waiting[model] = self.waiting.get(model, 0) + 1
        try:
            while (hold := self._holds.get(model)) is not None:
                remaining = timeout_s - (time.monotonic() - started)
                try:
                    await asyncio.wait_for(hold.released.wait(), max(remaining, 0.0))
                except TimeoutError:
                    raise BackendError(503, f"the model {model!r} is {self.reason(model)} (its engines were paused "
                                       f"or put to sleep through POST /pause or /sleep) and was not resumed within "
                                       f"{timeout_s:g} s", retryable=True, code="model_paused") from None
        finally:
            self.waiting[model] -= 1
        return time.monotonic() - started
