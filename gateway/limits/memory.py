"""In-process limits for a single gateway replica.

RPM uses an exact sliding window: a deque of admission times per key (TPM, likewise, of when requests
ended and their tokens, with their running sum). A sliding-window counter (two
fixed buckets, weighted) would be O(1) memory but approximate, admitting bursts past the limit at bucket
edges; the deque costs at most `rpm_limit` floats per active key, which is small for per-key limits, and
admission is amortised O(1). Each method is free of awaits, so a check and its update are atomic on the
event loop (not thread-safe: use it from one loop). A key's budget state is kept per period; a period's
is dropped once a later one starts and its holds are gone.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.limits.base import HELD_RETRY_AFTER_S, Admission, Hold, nanousd_to_usd, usd_to_nanousd


@dataclass
class _BudgetState:
    spent_nanousd: int = 0
    holds: dict[str, tuple[int, float]] = field(default_factory=dict)  # hold id -> (nano-USD, lapses at)

    def held(self, now: float) -> int:
        for hold_id in [h for h, (_, lapses) in self.holds.items() if lapses <= now]:
            del self.holds[hold_id]
        return sum(nanousd for nanousd, _ in self.holds.values())


class MemoryLimiter:
    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        assert window_s > 0
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._budgets: dict[tuple[str, int | None], _BudgetState] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}  # (when a request ended, its tokens)
        self._token_sums: dict[str, int] = {}

    def _budget(self, key_id: str, period: int | None) -> _BudgetState:
        state = self._budgets.get((key_id, period))
        if state is None:
            state = self._budgets[key_id, period] = _BudgetState()
            if period is not None:  # a new period: the key's finished ones go once nothing holds them
                for old in [k for k, s in self._budgets.items()
                            if k[0] == key_id and k[1] is not None and k[1] < period and not s.holds]:
                    del self._budgets[old]
        return state

    async def admit(
        self, key_id: str, rpm_limit: int | None, budget_usd: float | None, now: float | None = None,
        hold: Hold | None = None, period: int | None = None, tpm_limit: int | None = None,
    ) -> Admission:
        now = self._clock() if now is None else now
        state = self._budget(key_id, period)
        window = self._windows.setdefault(key_id, deque())
        while window and window[0] <= now - self.window_s:
            window.popleft()
        held = state.held(now) if budget_usd is not None else 0
        remaining_budget = self._remaining_budget(state, budget_usd, held)
        remaining_requests = None if rpm_limit is None else max(rpm_limit - len(window), 0)
        used = self._tokens_used(key_id, now) if tpm_limit is not None else 0
        remaining_tokens = None if tpm_limit is None else max(tpm_limit - used, 0)

        if budget_usd is not None and state.spent_nanousd >= usd_to_nanousd(budget_usd):
            return Admission(False, "budget", None, remaining_requests, remaining_budget, remaining_tokens)
        if budget_usd is not None and state.spent_nanousd + held >= usd_to_nanousd(budget_usd):
            return Admission(False, "budget_held", HELD_RETRY_AFTER_S, remaining_requests, remaining_budget,
                             remaining_tokens)
        if tpm_limit is not None and used >= tpm_limit:
            return Admission(False, "token_limit", self._tokens_free_in(key_id, now), remaining_requests,
                             remaining_budget, 0)
        if rpm_limit is not None:
            if len(window) >= rpm_limit:
                retry_after = window[0] + self.window_s - now if window else self.window_s
                return Admission(False, "rate_limit", retry_after, 0, remaining_budget, remaining_tokens)
            window.append(now)
            remaining_requests = rpm_limit - len(window)
        if budget_usd is not None and hold is not None:
            state.holds[hold.hold_id] = (usd_to_nanousd(hold.usd), now + hold.ttl_s)
        # The slot is its admission time: entries of equal time are interchangeable to the window.
        return Admission(True, None, None, remaining_requests, remaining_budget, remaining_tokens,
                         slot=repr(now) if rpm_limit is not None else None)

    async def release(self, key_id: str, admission: Admission, hold: Hold | None = None) -> None:
        window = self._windows.get(key_id)
        if admission.slot is not None and window:
            with contextlib.suppress(ValueError):  # aged out already
                window.remove(float(admission.slot))
        if hold is not None:
            state = self._budgets.get((key_id, hold.period))
            if state is not None:
                state.holds.pop(hold.hold_id, None)

    def _tokens_used(self, key_id: str, now: float) -> int:
        """The key's tokens in the window, the ones that aged out dropped."""
        ended = self._tokens.get(key_id)
        while ended and ended[0][0] <= now - self.window_s:
            self._token_sums[key_id] -= ended.popleft()[1]
        return self._token_sums.get(key_id, 0)

    def _tokens_free_in(self, key_id: str, now: float) -> float:
        """Seconds until the window's oldest tokens age out (the first that any free)."""
        return self._tokens[key_id][0][0] + self.window_s - now

    async def record_tokens(self, key_id: str, tokens: int, now: float | None = None) -> None:
        if tokens > 0:
            self._tokens.setdefault(key_id, deque()).append((self._clock() if now is None else now, tokens))
            self._token_sums[key_id] = self._token_sums.get(key_id, 0) + tokens

    async def record_spend(self, key_id: str, usd: float, period: int | None = None) -> None:
        self._budget(key_id, period).spent_nanousd += usd_to_nanousd(usd)

    async def settle(self, key_id: str, hold_id: str, usd: float, period: int | None = None) -> float | None:
        state = self._budget(key_id, period)
        state.spent_nanousd += usd_to_nanousd(usd)
        state.holds.pop(hold_id, None)
        return nanousd_to_usd(state.spent_nanousd)

    async def spent(self, key_id: str, period: int | None = None) -> float:
        state = self._budgets.get((key_id, period))
        return nanousd_to_usd(state.spent_nanousd) if state else 0.0

    async def set_spent(self, key_id: str, usd: float, period: int | None = None) -> None:
        self._budget(key_id, period).spent_nanousd = usd_to_nanousd(usd)

    async def close(self) -> None:
        self._windows.clear()
        self._budgets.clear()
        self._tokens.clear()
        self._token_sums.clear()

    @staticmethod
    def _remaining_budget(state: _BudgetState, budget_usd: float | None, held: int) -> float | None:
        if budget_usd is None:
            return None
        return nanousd_to_usd(max(usd_to_nanousd(budget_usd) - state.spent_nanousd - held, 0))
