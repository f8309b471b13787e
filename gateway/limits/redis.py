"""Limits shared by gateway replicas through Redis; exact because each admission is one Lua script.

Outage policy (`fail_open`):
- False (default, fail closed): `admit` returns Admission(allowed=False, reason="limits_unavailable"),
  which the HTTP layer turns into a 503. Limits stay a hard guarantee; an outage stops traffic.
- True (fail open): `admit` admits, with reason="limits_unavailable" so the caller can count it, and
  limits are not enforced during the outage. Availability over strictness.
Either way no exception leaves `admit` or `record_spend`. Spend that cannot be written is kept in process
and added on the next successful call, so an outage delays spend accounting instead of losing it.
redis-py reconnects on the next command, so admission resumes as soon as Redis is back.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from gateway.limits.base import (
    HELD_RETRY_AFTER_S,
    Admission,
    Hold,
    LimitsUnavailableError,
    nanousd_to_usd,
    usd_to_nanousd,
)
from storage.redis_state import RedisLimitState, StateUnavailableError, WindowCheck

logger = logging.getLogger(__name__)


class RedisLimiter:
    def __init__(self, state: RedisLimitState, *, fail_open: bool = False, window_s: float = 60.0) -> None:
        assert window_s > 0
        self.state = state
        self.fail_open = fail_open
        self.window_s = window_s
        self._unwritten_nanousd: dict[tuple[str, int | None], int] = {}  # (key id, period) -> nano-USD
        self._degraded = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "default",
        fail_open: bool = False,
        window_s: float = 60.0,
        socket_timeout_s: float = 0.5,
    ) -> RedisLimiter:
        state = RedisLimitState.from_url(url, prefix, socket_timeout_s=socket_timeout_s)
        return cls(state, fail_open=fail_open, window_s=window_s)

    async def admit(
        self, key_id: str, rpm_limit: int | None, budget_usd: float | None, now: float | None = None,
        hold: Hold | None = None, period: int | None = None, tpm_limit: int | None = None,
    ) -> Admission:
        budget_nanousd = None if budget_usd is None else usd_to_nanousd(budget_usd)
        held = None if hold is None else (hold.hold_id, usd_to_nanousd(hold.usd), hold.ttl_s)
        member = uuid.uuid4().hex
        try:
            if self._unwritten_nanousd:
                await self._write_unwritten()
            check = await self.state.check_and_take(
                key_id, rpm_limit, budget_nanousd, self.window_s, member, now, held, period, tpm_limit
            )
        except StateUnavailableError as exc:
            self._mark_degraded(exc)
            return Admission(allowed=self.fail_open, reason="limits_unavailable")
        self._mark_healthy()
        admission = self._admission(check, rpm_limit, budget_nanousd,
                                    self._unwritten_nanousd.get((key_id, period), 0), tpm_limit)
        return replace(admission, slot=member) if admission.allowed and rpm_limit is not None else admission

    async def release(self, key_id: str, admission: Admission, hold: Hold | None = None) -> None:
        if admission.slot is None and hold is None:
            return
        try:
            await self.state.release(key_id, admission.slot, hold.hold_id if hold is not None else None,
                                     hold.period if hold is not None else None)
        except StateUnavailableError as exc:  # the slot ages out, the hold lapses
            self._mark_degraded(exc)

    async def record_tokens(self, key_id: str, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        try:
            await self.state.record_tokens(key_id, tokens, self.window_s, uuid.uuid4().hex, now)
        except StateUnavailableError as exc:  # uncounted: the token rate is soft state
            self._mark_degraded(exc)

    async def record_spend(self, key_id: str, usd: float, period: int | None = None) -> None:
        self._keep_unwritten(key_id, period, usd_to_nanousd(usd))
        try:
            await self._write_unwritten()
        except StateUnavailableError as exc:
            self._mark_degraded(exc)

    async def settle(self, key_id: str, hold_id: str, usd: float, period: int | None = None) -> float | None:
        nanousd = usd_to_nanousd(usd)
        try:
            if self._unwritten_nanousd:
                await self._write_unwritten()
            return nanousd_to_usd(await self.state.settle(key_id, hold_id, nanousd, period))
        except StateUnavailableError as exc:  # the hold lapses on its own; the spend waits here
            self._keep_unwritten(key_id, period, nanousd)
            self._mark_degraded(exc)
            return None

    async def spent(self, key_id: str, period: int | None = None) -> float:
        try:
            stored = await self.state.get_spent(key_id, period)
        except StateUnavailableError as exc:
            raise LimitsUnavailableError(str(exc)) from exc
        return nanousd_to_usd(stored + self._unwritten_nanousd.get((key_id, period), 0))

    async def set_spent(self, key_id: str, usd: float, period: int | None = None) -> None:
        try:
            await self.state.set_spent(key_id, usd_to_nanousd(usd), period)
        except StateUnavailableError as exc:
            raise LimitsUnavailableError(str(exc)) from exc
        self._unwritten_nanousd.pop((key_id, period), None)

    def _keep_unwritten(self, key_id: str, period: int | None, nanousd: int) -> None:
        self._unwritten_nanousd[key_id, period] = self._unwritten_nanousd.get((key_id, period), 0) + nanousd

    async def close(self) -> None:
        if self._unwritten_nanousd:
            logger.warning("closing with unwritten spend for %d keys", len(self._unwritten_nanousd))
        await self.state.close()

    async def _write_unwritten(self) -> None:
        # Pop before awaiting so concurrent writers never add the same amount twice.
        for key_id, period in list(self._unwritten_nanousd):
            nanousd = self._unwritten_nanousd.pop((key_id, period), 0)
            try:
                await self.state.add_spend(key_id, nanousd, period)
            except StateUnavailableError:
                self._keep_unwritten(key_id, period, nanousd)
                raise

    def _admission(
        self, check: WindowCheck, rpm_limit: int | None, budget_nanousd: int | None, unwritten: int,
        tpm_limit: int | None = None,
    ) -> Admission:
        remaining_requests = None if rpm_limit is None else max(rpm_limit - check.requests_in_window, 0)
        remaining_tokens = None if tpm_limit is None else max(tpm_limit - check.tokens_in_window, 0)
        remaining_budget = None
        if budget_nanousd is not None:
            remaining_budget = nanousd_to_usd(max(budget_nanousd - check.spent_nanousd - check.held_nanousd
                                                  - unwritten, 0))
        if check.outcome == "over_budget":
            return Admission(False, "budget", None, remaining_requests, remaining_budget, remaining_tokens)
        if check.outcome == "over_held":
            return Admission(False, "budget_held", HELD_RETRY_AFTER_S, remaining_requests, remaining_budget,
                             remaining_tokens)
        if check.outcome == "over_tokens":
            return Admission(False, "token_limit", check.retry_after_s, remaining_requests, remaining_budget, 0)
        if check.outcome == "over_rate":
            return Admission(False, "rate_limit", check.retry_after_s, 0, remaining_budget, remaining_tokens)
        return Admission(True, None, None, remaining_requests, remaining_budget, remaining_tokens)

    def _mark_degraded(self, exc: StateUnavailableError) -> None:
        if not self._degraded:
            policy = "admitting without limits" if self.fail_open else "refusing requests"
            logger.error("limits state unavailable (%s); fail_open=%s: %s", exc, self.fail_open, policy)
        self._degraded = True

    def _mark_healthy(self) -> None:
        if self._degraded:
            logger.warning("limits state reachable again; enforcing limits")
        self._degraded = False
