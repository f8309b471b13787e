"""The order-preempting scheduler of bench/scheduling_preemption.py: a full batch gives its slot to a
waiting request ordered before its last running one, and the preempted request still finishes whole."""

from __future__ import annotations

from bench.scheduling_preemption import OrderPreemptingScheduler, preempt_for_order
from engine.hints import SchedulingHints
from engine.rank_policy import RankPolicy
from engine.sampling_params import SamplingParams
from engine.simulate import Arrival, make_sim_engine, simulate
from engine.step_time import LinearStepTime

STEP = LinearStepTime(c0=5e-3, c_prefill_token=1e-5, c_decode_seq=1e-4)


def request(t: float, index: int, output_len: int, score: float) -> Arrival:
    return Arrival(t, [1 + index, *range(100, 107)], SamplingParams(max_tokens=output_len, ignore_eos=True),
                   hints=SchedulingHints(rank_score=score))


def replay(preempt: bool) -> dict[str, tuple[float, int, int]]:
    engine = make_sim_engine(STEP, num_blocks=256, policy=RankPolicy(horizon_s=10.0), max_num_seqs=1)
    if preempt:
        preempt_for_order(engine)
        assert isinstance(engine.scheduler, OrderPreemptingScheduler)
    # A long request takes the only slot; a short one ranked far ahead arrives while it decodes.
    results = simulate(engine, [request(0.0, 0, 400, 1.0), request(0.05, 1, 5, 0.0)])
    return {r.request_id: (r.finish_time, r.num_output_tokens, r.num_preemptions) for r in results}


def test_a_short_request_takes_the_slot_of_a_long_running_one():
    plain, preempting = replay(False), replay(True)
    (long_id, short_id) = sorted(plain, key=lambda rid: -plain[rid][1])
    assert plain[short_id][0] > plain[long_id][0]  # without preemption it waits for the long answer
    assert preempting[short_id][0] < preempting[long_id][0]  # with it, it is served first
    assert preempting[long_id][2] == 1 and plain[long_id][2] == 0
    assert preempting[long_id][1] == 400 and preempting[short_id][1] == 5  # nothing lost
