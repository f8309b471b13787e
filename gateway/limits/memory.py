"""In-process limits for a single gateway replica.

RPM uses an exact sliding window: a deque of admission times per key. A sliding-window counter (two
fixed buckets, weighted) would be O(1) memory but approximate, admitting bursts past the limit at bucket
edges; the deque costs at most `rpm_limit` floats per active key, which is small for per-key limits, and
admission is amortised O(1). Each method is free of awaits, so a check and its update are atomic on the
event loop (not thread-safe: use it from one loop).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.limits.base import Admission, nanousd_to_usd, usd_to_nanousd


@dataclass
class _KeyState:
    admitted_at: deque[float] = field(default_factory=deque)
    spent_nanousd: int = 0


class MemoryLimiter:
    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        assert window_s > 0
        self.window_s = window_s
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    async def admit(
        self, key_id: str, rpm_limit: int | None, budget_usd: float | None, now: float | None = None
    ) -> Admission:
        now = self._clock() if now is None else now
        state = self._keys.setdefault(key_id, _KeyState())
        window = state.admitted_at
        while window and window[0] <= now - self.window_s:
            window.popleft()
        remaining_budget = self._remaining_budget(state, budget_usd)
        remaining_requests = None if rpm_limit is None else max(rpm_limit - len(window), 0)

        if budget_usd is not None and state.spent_nanousd >= usd_to_nanousd(budget_usd):
            return Admission(False, "budget", None, remaining_requests, remaining_budget)
        if rpm_limit is not None:
            if len(window) >= rpm_limit:
                retry_after = window[0] + self.window_s - now if window else self.window_s
                return Admission(False, "rate_limit", retry_after, 0, remaining_budget)
            window.append(now)
            remaining_requests = rpm_limit - len(window)
        return Admission(True, None, None, remaining_requests, remaining_budget)

    async def record_spend(self, key_id: str, usd: float) -> None:
        self._keys.setdefault(key_id, _KeyState()).spent_nanousd += usd_to_nanousd(usd)

    async def spent(self, key_id: str) -> float:
        state = self._keys.get(key_id)
        return nanousd_to_usd(state.spent_nanousd) if state else 0.0

    async def set_spent(self, key_id: str, usd: float) -> None:
        self._keys.setdefault(key_id, _KeyState()).spent_nanousd = usd_to_nanousd(usd)

    async def close(self) -> None:
        self._keys.clear()

    @staticmethod
    def _remaining_budget(state: _KeyState, budget_usd: float | None) -> float | None:
        if budget_usd is None:
            return None
        return nanousd_to_usd(max(usd_to_nanousd(budget_usd) - state.spent_nanousd, 0))
