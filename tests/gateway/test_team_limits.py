"""A team's limits beside its keys' (gateway/limit_gate.py), on the in-process and the Redis limiter: two
keys of one team spend the team's request rate and budget together while each is under its own; a request
one key holds of the team's budget holds it from the other; a request the team refuses after its key
admitted it gives the key's rate slot and hold back (Limiter.release); the answer's limits are the tighter
of the two; refusals name the team; a team's spend is seeded from the database once per period."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.auth import Caller
from gateway.limit_gate import LimitExceeded, LimitGate
from gateway.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.limits.base import Admission, Hold
from gateway.team_limits import TeamLimits
from tests.gateway.test_limits import REDIS_URL, delete_prefix, needs_redis, unique_prefix

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    prefix = unique_prefix()
    shared = RedisLimiter.from_url(REDIS_URL, prefix=prefix)
    yield shared
    await shared.close()
    await delete_prefix(prefix)


def team(**limits: object) -> TeamLimits:
    return TeamLimits(f"t-{uuid.uuid4().hex[:8]}", "platform", **limits)  # type: ignore[arg-type]


def key_of(team_limits: TeamLimits | None, **limits: object) -> Caller:
    return Caller(f"k-{uuid.uuid4().hex[:8]}", team=team_limits, **limits)  # type: ignore[arg-type]


def hold(usd: float) -> Hold:
    return Hold(uuid.uuid4().hex, usd)


async def refused(gate: LimitGate, caller: Caller, held: Hold | None = None) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as refusal:
        await gate.admit(caller, held, held)
    return refusal.value


async def test_two_keys_spend_the_teams_request_rate_together(limiter: Limiter) -> None:
    gate, shared = LimitGate(limiter, set()), team(rpm_limit=3)
    a, b = key_of(shared, rpm_limit=10), key_of(shared, rpm_limit=10)
    for caller in (a, b, a):
        assert (await gate.admit(caller)) is not None
    refusal = await refused(gate, b)
    assert (refusal.status, refusal.code) == (429, "rate_limit_exceeded")
    assert "team 'platform'" in refusal.message and shared.team_id in refusal.message
    assert refusal.admission is not None and (refusal.admission.rpm_limit, refusal.admission.remaining_requests) == (3, 0)
    assert refusal.retry_after_s is not None and 0 < refusal.retry_after_s <= 60
    # b's own slot went back: its own window holds one request (the one admitted), not two.
    alone = await limiter.admit(b.key_id, 10, None)  # type: ignore[arg-type]
    assert alone.remaining_requests == 10 - 2


async def test_a_refusal_by_the_team_gives_the_keys_slot_and_hold_back(limiter: Limiter) -> None:
    gate, shared = LimitGate(limiter, set()), team(budget_usd=1.0)
    a, b = key_of(shared, rpm_limit=2, budget_usd=1.0), key_of(shared, budget_usd=5.0)
    first = hold(1.0)
    assert (await gate.admit(b, first, first)) is not None  # b's request in flight holds the team's whole 1.0
    for _ in range(3):  # each time the key admits (slot and 0.6 held), then the team refuses
        refusal = await refused(gate, a, hold(0.6))
        assert refusal.code == "budget_held" and "team 'platform'" in refusal.message
    # Nothing of a's was kept: both its slots are free, and its whole budget.
    own = await limiter.admit(a.key_id, 2, 1.0, hold=hold(0.99))  # type: ignore[arg-type]
    assert own.allowed and own.remaining_requests == 1 and own.remaining_budget_usd == pytest.approx(1.0)


async def test_a_hold_of_one_key_holds_the_teams_budget_from_the_other(limiter: Limiter) -> None:
    gate, shared = LimitGate(limiter, set()), team(budget_usd=1.0)
    a, b = key_of(shared, budget_usd=10.0), key_of(shared)  # b has no budget of its own
    running = hold(1.0)  # admitted while spent + held is below the budget: this fills it
    admitted = await gate.admit(a, running, running)
    assert admitted is not None and admitted.budget_usd == 1.0  # the team's leaves less than a's 10
    assert (await refused(gate, b, hold(0.5))).code == "budget_held"
    await limiter.settle(shared.subject, running.hold_id, 0.25)  # a's request ends: 0.25 spent, nothing held
    await limiter.settle(a.key_id, running.hold_id, 0.25)  # type: ignore[arg-type]
    later = hold(0.5)
    admitted = await gate.admit(b, later, later)
    assert admitted is not None and admitted.remaining_budget_usd == pytest.approx(0.75)
    await limiter.settle(shared.subject, later.hold_id, 0.75)
    exhausted = await refused(gate, a, hold(0.01))
    assert exhausted.code == "budget_exceeded" and "has spent its budget" in exhausted.message
    assert await limiter.spent(a.key_id) == pytest.approx(0.25)  # type: ignore[arg-type]  # a alone is far under


async def test_the_answer_says_the_tighter_of_the_two(limiter: Limiter) -> None:
    gate = LimitGate(limiter, set())
    shared = team(rpm_limit=100, tpm_limit=50, budget_usd=2.0, budget_period="month")
    caller = key_of(shared, rpm_limit=5, budget_usd=9.0)
    first = Hold(uuid.uuid4().hex, 0.5, period=None)
    admitted = await gate.admit(caller, first, Hold(first.hold_id, 0.5, period=_month()))
    assert admitted is not None and admitted.allowed
    assert (admitted.rpm_limit, admitted.remaining_requests) == (5, 4)  # the key's: it leaves less
    assert (admitted.tpm_limit, admitted.remaining_tokens) == (50, 50)  # the team's: the key has none
    assert (admitted.budget_usd, admitted.remaining_budget_usd) == (2.0, pytest.approx(2.0))  # the team's
    assert admitted.budget_renews_at is not None  # the team's month
    lone = key_of(None, rpm_limit=5)
    assert (await gate.admit(lone)).rpm_limit == 5  # type: ignore[union-attr]
    assert await gate.admit(key_of(team())) is None  # a team without limits adds nothing


async def test_a_teams_token_rate_counts_all_its_keys(limiter: Limiter) -> None:
    gate, shared = LimitGate(limiter, set()), team(tpm_limit=100)
    a, b = key_of(shared), key_of(shared)
    await gate.admit(a)
    await limiter.record_tokens(shared.subject, 60)
    await gate.admit(b)
    await limiter.record_tokens(shared.subject, 60)
    refusal = await refused(gate, a)
    assert refusal.code == "rate_limit_exceeded" and "tpm_limit" in refusal.message and "team" in refusal.message


async def test_team_spend_is_seeded_from_the_database_once(limiter: Limiter) -> None:
    seeded: set[tuple[str, int | None]] = set()
    gate, shared = LimitGate(limiter, seeded), team(budget_usd=1.0, spent_usd=0.9)
    caller = key_of(shared)
    admitted = await gate.admit(caller, hold(0.05), hold(0.05))
    assert admitted is not None and admitted.remaining_budget_usd == pytest.approx(0.1)
    assert (shared.subject, None) in seeded and await limiter.spent(shared.subject) == pytest.approx(0.9)


async def test_release_gives_back_exactly_one_slot_and_its_hold(limiter: Limiter) -> None:
    taken = [await limiter.admit("k", 3, 1.0, hold=hold(0.3)) for _ in range(2)]
    extra = hold(0.3)
    third = await limiter.admit("k", 3, 1.0, hold=extra)
    assert [a.remaining_requests for a in (*taken, third)] == [2, 1, 0] and third.slot is not None
    await limiter.release("k", third, extra)
    again = await limiter.admit("k", 3, 1.0, hold=hold(0.3))
    assert again.allowed and again.remaining_requests == 0 and again.remaining_budget_usd == pytest.approx(0.4)
    await limiter.release("k", Admission(True), None)  # nothing taken: nothing to give back


def _month() -> int:
    from gateway.limits.periods import current_period

    month = current_period("month")
    assert month is not None
    return month
