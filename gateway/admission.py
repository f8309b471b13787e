"""Admission queue per deployment: at most `limit` requests in flight; the rest wait and are released
in the scheduling policy's order (engine/policy.py; by default the ranker's shortest-first with
aging, engine/rank_policy.py), the same sort key the engines use, so a request's place is decided by
one rule from the gateway down to the GPU. No limit: no queue, no cost.

A waiter that is cancelled (client gone) leaves the queue; a slot handed to a waiter that was
cancelled at that moment is passed on, never lost."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from engine.hints import NO_HINTS, SchedulingHints
from engine.policy import SchedulingPolicy
from gateway.backends.base import BackendError


@dataclass(frozen=True)
class Waiting:
    """What the policy reads: the same attribute names as an engine Sequence."""

    arrival_time: float
    priority: float = 0.0
    hints: SchedulingHints = NO_HINTS


class QueueFull(BackendError):
    """The deployment's queue holds `max_queue` waiters: a 429 the dispatcher first takes to the model's
    other deployments (it is retryable, and no failure of the deployment: no cooldown)."""

    def __init__(self, waiting: int) -> None:
        super().__init__(429, f"the model's queue is full ({waiting} requests waiting); retry shortly",
                         retryable=True, code="queue_full", retry_after_s=1.0)


class AdmissionQueue:
    def __init__(self, limit: int | None, policy: SchedulingPolicy, max_waiting: int | None = None) -> None:
        assert limit is None or limit > 0
        self.limit = limit
        self.max_waiting = max_waiting
        self.policy = policy
        self.active = 0
        self._heap: list[tuple[tuple[float, ...], int, asyncio.Future[None]]] = []
        self._counter = itertools.count()
        self.waiting = 0  # live waiters; the heap may also hold cancelled ones, dropped when reached

    async def acquire(self, item: Waiting) -> None:
        if self.limit is None:
            return
        if self.active < self.limit and not self.waiting:
            self.active += 1
            return
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            raise QueueFull(self.waiting)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.policy.sort_key(item), next(self._counter), future))  # type: ignore[arg-type]
        self.waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            else:
                future.cancel()
                self.waiting -= 1
            raise

    def release(self) -> None:
        if self.limit is None:
            return
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                future.set_result(None)  # the slot moves to the next waiter: `active` is unchanged
                self.waiting -= 1
                return
        self.active -= 1
        assert self.active >= 0

    @asynccontextmanager
    async def slot(self, item: Waiting) -> AsyncIterator[None]:
        await self.acquire(item)
        try:
            yield
        finally:
            self.release()


def waiting_item(priority: float, hints: SchedulingHints, arrival_time: float | None = None) -> Waiting:
    return Waiting(time.time() if arrival_time is None else arrival_time, priority, hints)


def make_admission(limit: int | None, policy_name: str, max_waiting: int | None = None) -> AdmissionQueue | None:
    """A deployment's queue; none without a limit (then admission costs nothing)."""
    if limit is None:
        return None
    from engine.policy import make_policy  # noqa: PLC0415

    return AdmissionQueue(limit, make_policy(policy_name), max_waiting)
