"""The rank policy: shortest predicted answer first, linear aging, and its starvation bound under a
continuous stream of short requests, through the real scheduler on the simulated runner."""

from __future__ import annotations

import pytest

from engine.hints import SchedulingHints
from engine.policy import POLICIES, make_policy
from engine.program_policy import DEFAULT_INTERACTIVE_CREDIT_S
from engine.rank_policy import UNRANKED_SCORE, RankPolicy
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import Arrival, RequestResult, make_sim_engine, simulate
from engine.step_time import LinearStepTime
from gateway.admission import Waiting

STEP = LinearStepTime(c0=5e-3, c_prefill_token=1e-5, c_decode_seq=1e-4)


def seq(rid: str, arrival: float, score: float | None, priority: float = 0.0) -> Sequence:
    return Sequence(rid, [1, 2, 3], SamplingParams(max_tokens=4), arrival, priority,
                    hints=SchedulingHints(rank_score=score))


def order(policy: RankPolicy, seqs: list[Sequence]) -> list[str]:
    return [s.request_id for s in sorted(seqs, key=policy.sort_key)]


def test_shorter_predicted_first_within_the_horizon():
    policy = RankPolicy(horizon_s=10.0)
    seqs = [seq("long", 0.0, 0.9), seq("short", 1.0, 0.1), seq("mid", 2.0, 0.5)]
    assert order(policy, seqs) == ["short", "mid", "long"]  # keys 2, 7, 9


def test_aging_lets_an_old_long_request_ahead_of_new_short_ones():
    policy = RankPolicy(horizon_s=10.0)
    # long: 0 + 10 x 1.0 = 10; a short request arriving at 10.5 has key 10.5: the old one goes first.
    assert order(policy, [seq("late-short", 10.5, 0.0), seq("old-long", 0.0, 1.0)]) == ["old-long", "late-short"]
    assert order(policy, [seq("early-short", 9.5, 0.0), seq("old-long", 0.0, 1.0)]) == ["early-short", "old-long"]


def test_zero_horizon_is_fcfs_priority_leads_and_unranked_is_the_median():
    assert order(RankPolicy(0.0), [seq("b", 2.0, 0.0), seq("a", 1.0, 1.0)]) == ["a", "b"]
    policy = RankPolicy(10.0)
    assert order(policy, [seq("urgent-long", 5.0, 1.0, priority=-1), seq("short", 0.0, 0.0)])[0] == "urgent-long"
    unranked = seq("unranked", 0.0, None)
    assert policy.sort_key(unranked) == (0.0, 10.0 * UNRANKED_SCORE)
    assert policy.sort_key(seq("clipped", 0.0, 7.0)) == (0.0, 10.0)  # scores are clipped to [0, 1]


def test_registry_and_composition_and_admission_items_share_the_key():
    assert make_policy("rank").name == "rank"
    wrapped = make_policy("program-rank")  # the agent-sessions layer wraps the same plain key
    first_turn = Sequence("first", [1, 2, 3], SamplingParams(max_tokens=4), 3.0,
                          hints=SchedulingHints(rank_score=0.7, in_program=True))
    assert wrapped.sort_key(first_turn) == make_policy("rank").sort_key(first_turn)
    # An interactive request: the same key, as of interactive_credit_s earlier.
    assert wrapped.sort_key(seq("chat", 3.0, 0.7)) == make_policy("rank").sort_key(
        seq("chat", 3.0 - DEFAULT_INTERACTIVE_CREDIT_S, 0.7))
    policy = RankPolicy(10.0)
    item = Waiting(arrival_time=1.0, priority=0.0, hints=SchedulingHints(rank_score=0.3))
    assert policy.sort_key(item) == policy.sort_key(seq("same", 1.0, 0.3))
    assert "rank" in POLICIES


def _stream(horizon_s: float | None) -> tuple[RequestResult, list[RequestResult], float]:
    """One slot; a short request (score 0) every 20 ms for 6 s, more than the slot can serve; one
    long-ranked request (score 1) at t = 0.1 s. Every request decodes 4 tokens."""
    policy = make_policy("fcfs") if horizon_s is None else RankPolicy(horizon_s)
    engine = make_sim_engine(STEP, num_blocks=256, policy=policy, max_num_seqs=1, max_num_batched_tokens=64,
                             max_model_len=256)
    arrivals = [Arrival(i * 0.02, [1000 + i, 5, 6], SamplingParams(max_tokens=4), f"short{i}",
                        hints=SchedulingHints(rank_score=0.0)) for i in range(300)]
    long_at = 0.1
    arrivals.append(Arrival(long_at, [999, 5, 6], SamplingParams(max_tokens=4), "long",
                            hints=SchedulingHints(rank_score=1.0)))
    results = simulate(engine, sorted(arrivals, key=lambda a: a.arrival_time))
    by_id = {r.request_id: r for r in results}
    return by_id.pop("long"), list(by_id.values()), long_at


@pytest.mark.parametrize("horizon_s", [0.5, 2.0])
def test_starvation_bound_under_a_stream_of_short_requests(horizon_s: float):
    long, shorts, long_at = _stream(horizon_s)
    assert long.first_scheduled_time is not None
    # The bound: no short request that arrived more than horizon_s after the long one goes before it.
    overtook = [s for s in shorts if s.first_scheduled_time < long.first_scheduled_time]
    assert overtook, "the short requests should pass the long one within the horizon"
    assert max(s.arrival_time for s in overtook) <= long_at + horizon_s + 1e-9
    # ...and it is served long before the stream ends (6 s, with a backlog growing all the while).
    assert long.finish_time < 6.0


def test_without_aging_the_long_request_starves_and_fcfs_serves_it_in_turn():
    starved, shorts, _ = _stream(1e9)  # pure shortest-first: behind every short request of the stream
    assert starved.first_scheduled_time > max(s.first_scheduled_time for s in shorts)
    in_turn, shorts, long_at = _stream(None)
    assert all(s.arrival_time <= long_at for s in shorts if s.first_scheduled_time < in_turn.first_scheduled_time)
