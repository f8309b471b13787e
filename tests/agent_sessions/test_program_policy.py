"""Returning programs first, composed with the inner policy; and the engine's pin behaviour for
sessions: a pin holds while the program's next turn waits, and pins hold against new admissions."""

from __future__ import annotations

import time

from engine.hints import SchedulingHints
from engine.policy import POLICIES, FCFSPolicy, make_policy
from engine.program_policy import ProgramFirstPolicy
from engine.rank_policy import RankPolicy
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import make_sim_engine
from engine.waiting_queue import WaitingQueue

PARAMS = SamplingParams(max_tokens=4, ignore_eos=True)


def seq(name: str, arrival: float, program_start: float | None = None, rank: float | None = None,
        in_program: bool | None = None) -> Sequence:
    """A request; a returning turn (program_start given) is always part of a program."""
    in_program = program_start is not None if in_program is None else in_program
    return Sequence(name, [1, 2, 3], PARAMS, arrival, hints=SchedulingHints(rank, program_start, in_program))


def order(policy: ProgramFirstPolicy | FCFSPolicy, seqs: list[Sequence]) -> list[str]:
    queue = WaitingQueue(policy)
    for s in seqs:
        queue.push(s)
    return [queue.pop().request_id for _ in seqs]


def test_returning_turn_goes_ahead_of_programs_that_started_later() -> None:
    seqs = [seq("chat-early", 1.0), seq("new-program", 9.0, in_program=True),
            seq("old-program-turn-5", 10.0, program_start=2.0), seq("older-program-turn-9", 11.0, program_start=0.5)]
    assert order(ProgramFirstPolicy(FCFSPolicy(), interactive_credit_s=0.0), seqs) == [
        "older-program-turn-9", "chat-early", "old-program-turn-5", "new-program"]
    # With the default credit the interactive request goes first; the programs keep their order.
    assert order(make_policy("program-fcfs"), seqs) == [
        "chat-early", "older-program-turn-9", "old-program-turn-5", "new-program"]


def test_interactive_requests_overtake_only_programs_started_within_the_credit() -> None:
    policy = ProgramFirstPolicy(FCFSPolicy(), interactive_credit_s=300.0)
    seqs = [seq("turn-of-program-from-30", 400.0, program_start=30.0), seq("chat", 340.0),
            seq("turn-of-program-from-50", 401.0, program_start=50.0), seq("first-turn", 200.0, in_program=True)]
    # The chat ranks as of 40 s: after the program that started at 30 s, before the one from 50 s and
    # before a first turn that waited since 200 s.
    assert order(policy, seqs) == ["turn-of-program-from-30", "chat", "turn-of-program-from-50", "first-turn"]


def test_a_chat_flood_cannot_starve_a_program() -> None:
    policy = ProgramFirstPolicy(FCFSPolicy(), interactive_credit_s=300.0)
    flood = [seq(f"chat{t}", t + 0.5) for t in range(250, 1250)]
    served = order(policy, [*flood, seq("turn", 500.0, program_start=0.0)])
    # Only chats that arrived within the credit after the program's start (before 300 s) go first.
    assert served.index("turn") == 50


def test_without_hints_the_inner_order_is_unchanged() -> None:
    seqs = [seq(f"r{i}", t, rank=r) for i, (t, r) in enumerate([(3.0, 0.9), (1.0, 0.1), (2.0, 0.5)])]
    for name in ("fcfs", "priority", "rank"):
        assert order(make_policy(f"program-{name}"), seqs) == order(make_policy(name), seqs)


def test_composes_with_the_rankers_aging() -> None:
    policy = ProgramFirstPolicy(RankPolicy(horizon_s=30.0))
    # A long predicted answer from a program that started 100 s ago beats a short new one: its age
    # counts as aging credit; a program that started just now does not.
    seqs = [seq("short-new", 100.0, rank=0.0, in_program=True), seq("long-old-program", 101.0, program_start=0.0, rank=1.0),
            seq("long-young-program", 101.0, program_start=99.0, rank=1.0)]
    assert order(policy, seqs) == ["long-old-program", "short-new", "long-young-program"]


def test_epoch_program_start_is_compared_on_the_engines_clock() -> None:
    now_mono, now_wall = time.monotonic(), time.time()
    policy = make_policy("program-fcfs")
    started_a_minute_ago = seq("returning", now_mono, program_start=now_wall - 60)
    just_now = seq("new", now_mono - 1.0, in_program=True)
    assert order(policy, [just_now, started_a_minute_ago]) == ["returning", "new"]
    assert policy.sort_key(started_a_minute_ago)[0] < now_mono - 59


def test_every_policy_has_a_program_first_version() -> None:
    for name in ("fcfs", "priority", "rank"):
        assert f"program-{name}" in POLICIES and make_policy(f"program-{name}").name == f"program-{name}"


def sim_engine(**config: object):  # noqa: ANN201
    return make_sim_engine(RooflineStepTime.builtin("llama-3.1-8b"), num_blocks=64, block_size=16,
                           max_model_len=1024, **config)


def run_until_done(engine) -> None:  # noqa: ANN001
    while engine.has_unfinished():
        engine.step()


def test_a_pin_is_held_while_the_next_turn_waits() -> None:
    engine = sim_engine(pin_hold_on_arrival_s=30.0)
    engine.add_request("t1", list(range(1, 161)), PARAMS, session_id="s", pin_ttl_s=1.0)
    run_until_done(engine)
    assert engine.session_info("s")["pinned_blocks"] == 10
    engine.add_request("t2", list(range(1, 170)), PARAMS, session_id="s")
    deadline = engine.block_manager.pins.pins["s"].deadline
    assert deadline >= engine.clock.now() + 29.0  # the turn is here: the KV waits for it
    engine.clock.advance(5.0)
    engine.expire_pins()
    assert "s" in engine.block_manager.pins


def test_pins_hold_against_new_admissions_while_work_runs() -> None:
    for hold in (True, False):
        engine = sim_engine(pins_hold_admission=hold, pin_budget_fraction=0.75)
        engine.add_request("agent", list(range(1, 641)), PARAMS, session_id="s", pin_ttl_s=60.0)
        run_until_done(engine)  # 40 of 64 blocks pinned
        engine.add_request("runner", [7] * 200, SamplingParams(max_tokens=50, ignore_eos=True))
        engine.step()  # something runs now
        engine.add_request("big-new", [9] * 300, PARAMS)
        engine.step()
        pinned = engine.session_info("s")["pinned_blocks"]
        waiting = [s.request_id for s in engine.scheduler.waiting]
        if hold:
            assert pinned == 40 and waiting == ["big-new"]
        else:
            assert pinned == 0 and waiting == []  # the new request took the pinned memory
