"""Admission by a request's limits: its key's (rpm, tpm, budget with its hold) and, for a key of a team,
its team's too, counted by the same limiter under the subject "team:<id>" (gateway/team_limits.py).

The key is asked first, then the team. Where the team refuses a request its key admitted, the key's rate
slot and hold are given back (Limiter.release): a refused request takes nothing from either. Each
subject's spend is seeded from the database the first time it is used in a budget period (a restarted
gateway, or a Redis that lost its data, must not refill a budget). A refusal is OpenAI's 429 naming whose
limit it was; the answer's x-ratelimit-* headers say what is left of the tighter of the two."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

from engine.server.errors import APIError
from gateway.auth import Caller
from gateway.limits.base import Admission, Hold, Limiter, LimitsUnavailableError, usd_to_nanousd
from gateway.limits.periods import BudgetPeriod, current_period, period_end
from gateway.team_limits import TeamLimits

Number = TypeVar("Number", int, float)


class LimitExceeded(APIError):
    def __init__(self, status: int, message: str, code: str, retry_after_s: float | None = None,
                 admission: Admission | None = None) -> None:
        super().__init__(status, message, code=code)
        self.retry_after_s = retry_after_s
        self.admission = admission  # what the limits said: the refusal's x-ratelimit-* headers too, as OpenAI's


@dataclass(frozen=True)
class _Subject:
    """Whose limits: a key's, or its team's."""

    id: str  # what the limiter counts it under
    rpm_limit: int | None
    tpm_limit: int | None
    budget_usd: float | None
    budget_period: BudgetPeriod | None
    stored_spend: Callable[[int | None], float]
    team: TeamLimits | None = None  # None: the key

    @property
    def limited(self) -> bool:
        return self.rpm_limit is not None or self.tpm_limit is not None or self.budget_usd is not None

    def renewal(self, period: int | None) -> str:
        if period is None or self.budget_period is None:
            return ""
        renews = datetime.fromtimestamp(period_end(self.budget_period, period), UTC)
        return f" for this {self.budget_period} (UTC); it renews at {renews.isoformat().replace('+00:00', 'Z')}"


def _key(caller: Caller) -> _Subject:
    assert caller.key_id is not None
    return _Subject(caller.key_id, caller.rpm_limit, caller.tpm_limit, caller.budget_usd, caller.budget_period,
                    caller.stored_spend)


def _team(team: TeamLimits) -> _Subject:
    return _Subject(team.subject, team.rpm_limit, team.tpm_limit, team.budget_usd, team.budget_period,
                    team.stored_spend, team)


class LimitGate:
    def __init__(self, limiter: Limiter, seeded: set[tuple[str, int | None]]) -> None:
        self.limiter = limiter
        self.seeded = seeded  # (subject, budget period) whose spend the limiter was given from the database

    async def admit(self, caller: Caller, hold: Hold | None = None, team_hold: Hold | None = None) -> Admission | None:
        """Take a rate slot and, where there is a budget, the request's hold, of the key and of its team (the
        team's `team_hold`, in the team's budget period); what is left of the tighter of their limits (None:
        neither has any), or a LimitExceeded when either refuses."""
        if caller.key_id is None:
            return None
        key = _key(caller)
        team = _team(caller.team) if caller.team is not None and caller.team.limited else None
        key_admitted = await self._admit(key, hold) if key.limited else None
        if team is None:
            return key_admitted
        try:
            team_admitted = await self._admit(team, team_hold)
        except LimitExceeded as refused:
            if key_admitted is not None:  # the request goes no further: the key's slot and hold back
                await self.limiter.release(key.id, key_admitted, hold)
            if refused.admission is not None:
                refused.admission = tighter(key_admitted, refused.admission)
            raise
        return tighter(key_admitted, team_admitted)

    async def _admit(self, subject: _Subject, hold: Hold | None) -> Admission:
        period = hold.period if hold is not None else current_period(subject.budget_period)
        if subject.budget_usd is not None and (subject.id, period) not in self.seeded:
            await self._seed_spend(subject, period)
        admission = await self.limiter.admit(subject.id, subject.rpm_limit, subject.budget_usd, hold=hold,
                                             period=period, tpm_limit=subject.tpm_limit)
        renews = period_end(subject.budget_period, period) if period is not None and subject.budget_period else None
        admission = replace(admission, rpm_limit=subject.rpm_limit, tpm_limit=subject.tpm_limit,
                            budget_usd=subject.budget_usd, budget_renews_at=renews)
        if admission.allowed:
            return admission
        raise _refusal(subject, admission, period)

    async def _seed_spend(self, subject: _Subject, period: int | None) -> None:
        """The database keeps spend across restarts; the limiter (in process, or a Redis that lost its
        data) must not start below it, or a restart would refill every budget."""
        stored = subject.stored_spend(period)
        try:
            # Compared in nano-USD: float drift in the stored sum must not overwrite a live Redis total.
            if usd_to_nanousd(await self.limiter.spent(subject.id, period)) < usd_to_nanousd(stored):
                await self.limiter.set_spent(subject.id, stored, period)
        except LimitsUnavailableError:
            return  # admit() applies the outage policy; seed on a later request
        self.seeded.add((subject.id, period))


def _refusal(subject: _Subject, admission: Admission, period: int | None) -> LimitExceeded:
    team = subject.team
    if admission.reason == "rate_limit":
        whose = "this API key" if team is None else f"{team.label}, all its keys' requests together"
        return LimitExceeded(429, f"rate limit reached for {whose}", "rate_limit_exceeded",
                             admission.retry_after_s, admission)
    if admission.reason == "token_limit":
        whose = "this API key: its requests" if team is None else f"{team.label}: its keys' requests"
        return LimitExceeded(429, f"token rate limit reached for {whose} of the last minute used {subject.tpm_limit} "
                             "tokens or more (tpm_limit)", "rate_limit_exceeded", admission.retry_after_s, admission)
    if admission.reason == "budget":
        whose = "this API key has" if team is None else f"{team.label} has"
        return LimitExceeded(429, f"{whose} spent its budget" + subject.renewal(period), "budget_exceeded",
                             admission=admission)
    if admission.reason == "budget_held":
        whose = "this API key's budget is held by its requests" if team is None else \
            f"the budget of {team.label} is held by its keys' requests"
        return LimitExceeded(429, f"what is left of {whose} in flight (each holds its worst-case cost until it "
                             "ends); retry when they finish", "budget_held", admission.retry_after_s, admission)
    return LimitExceeded(503, "limits are unavailable (Redis is not answering)", "limits_unavailable")


def tighter(key: Admission | None, team: Admission) -> Admission:
    """One admission saying, for each of requests, tokens and budget, what is left of whichever of the two
    leaves less (the one that would refuse first), with that one's limit; the team's decision."""
    if key is None:
        return replace(team, slot=None)
    requests = _least((key.rpm_limit, key.remaining_requests), (team.rpm_limit, team.remaining_requests))
    tokens = _least((key.tpm_limit, key.remaining_tokens), (team.tpm_limit, team.remaining_tokens))
    team_budget = (team.budget_usd, team.remaining_budget_usd)
    team_binds = _least((key.budget_usd, key.remaining_budget_usd), team_budget) is team_budget
    budget = (*team_budget, team.budget_renews_at) if team_binds else (
        key.budget_usd, key.remaining_budget_usd, key.budget_renews_at)
    return replace(team, slot=None, rpm_limit=requests[0], remaining_requests=requests[1], tpm_limit=tokens[0],
                   remaining_tokens=tokens[1], budget_usd=budget[0], remaining_budget_usd=budget[1],
                   budget_renews_at=budget[2])


def _least(a: tuple[Number | None, Number | None], b: tuple[Number | None, Number | None]) -> tuple[
        Number | None, Number | None]:
    """(limit, remaining) of the one with less remaining, `b` (the team's) on a tie: a refusal by the team
    names its limit. One without a limit (or not known) never is."""
    if a[0] is None or a[1] is None:
        return b
    if b[0] is None or b[1] is None:
        return a
    return b if b[1] <= a[1] else a
