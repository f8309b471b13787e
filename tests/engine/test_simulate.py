from __future__ import annotations

import random

import pytest

from engine.batch import StepShape
from engine.clock import VirtualClock
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sim_runner import SimulatedRunner
from engine.simulate import Arrival, make_sim_engine, simulate
from engine.step_time import LinearStepTime, save_profile

STEP = LinearStepTime(c0=5e-3, c_prefill_token=2e-5, c_prefill_seq=1e-4, c_attn=1e-10, c_decode_seq=5e-5,
                      c_kv_token=1e-8)


def prompt(index: int, length: int) -> list[int]:
    return [index + 1] + [7] * (length - 1)  # distinct first token: no accidental prefix sharing


def arrival(t: float, index: int, prompt_len: int, output_len: int) -> Arrival:
    return Arrival(t, prompt(index, prompt_len), SamplingParams(max_tokens=output_len))


# ---- the runner -------------------------------------------------------------------------------


def test_runner_advances_clock_and_never_samples_eos():
    clock = VirtualClock()
    eos = tuple(range(0, 50))  # half the vocabulary
    runner = SimulatedRunner(STEP, clock, vocab_size=100, eos_token_ids=eos)
    engine = LLMEngine(EngineConfig(num_blocks=64, max_num_batched_tokens=256), runner, clock,
                       record_steps=True)
    for i in range(3):
        engine.add_request(f"q{i}", prompt(i, 40), SamplingParams(max_tokens=30))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    assert all(o.new_token_ids[0] not in eos and 0 <= o.new_token_ids[0] < 100 for o in outputs)
    assert {o.num_output_tokens for o in outputs if o.finished} == {30}
    assert [o.finish_reason for o in outputs if o.finished] == ["length"] * 3
    # The clock moved by exactly the modelled step times.
    assert clock.now() == pytest.approx(sum(STEP.predict(r.shape) for r in engine.step_log))
    assert all(r.duration_s == pytest.approx(STEP.predict(r.shape)) for r in engine.step_log)


def test_placeholder_tokens_are_deterministic():
    a = SimulatedRunner(STEP, VirtualClock(), vocab_size=1000, eos_token_ids=(5,))
    b = SimulatedRunner(STEP, VirtualClock(), vocab_size=1000, eos_token_ids=(5,))
    tokens = [a.placeholder_token("req", p) for p in range(100)]
    assert tokens == [b.placeholder_token("req", p) for p in range(100)]
    assert len(set(tokens)) > 50 and 5 not in tokens and all(0 <= t < 1000 for t in tokens)
    # execute() returns the same tokens as placeholder_token (it inlines it).
    clock = VirtualClock()
    engine = LLMEngine(EngineConfig(num_blocks=64), SimulatedRunner(STEP, clock, vocab_size=1000,
                                                                    eos_token_ids=(5,)), clock)
    engine.add_request("req", [1, 2, 3], SamplingParams(max_tokens=20))
    outputs = [o for _ in range(20) for o in engine.step()]  # decode steps fuse: several tokens an output
    assert [t for o in outputs for t in o.new_token_ids] == tokens[3:23]  # the first at position len(prompt)
    assert tokens != [a.placeholder_token("other", p) for p in range(100)]


# ---- simulate ---------------------------------------------------------------------------------


def lone_request_steps(prompt_len: int, output_len: int, chunk: int) -> tuple[list[StepShape], int]:
    """The shapes the engine runs for one request alone: prefill chunks, then one decode per token."""
    shapes, done = [], 0
    while done < prompt_len:
        n = min(chunk, prompt_len - done)
        done += n
        shapes.append(StepShape(n, 1, 0, done, n * done))
    num_prefill = len(shapes)
    shapes += [StepShape(0, 0, 1, prompt_len + k, 0) for k in range(1, output_len)]
    return shapes, num_prefill


def test_lone_request_latency_is_the_sum_of_its_steps():
    engine = make_sim_engine(STEP, num_blocks=512)
    shapes, num_prefill = lone_request_steps(1000, 50, engine.config.long_prefill_token_threshold)
    [result] = simulate(engine, [arrival(3.0, 0, 1000, 50)])
    assert result.finish_reason == "length" and result.num_output_tokens == 50
    assert result.first_scheduled_time == 3.0
    assert result.ttft == pytest.approx(sum(STEP.predict(s) for s in shapes[:num_prefill]))
    assert result.latency == pytest.approx(sum(STEP.predict(s) for s in shapes))
    assert result.tpot == pytest.approx(sum(STEP.predict(s) for s in shapes[num_prefill:]) / 49)


def test_idle_gaps_are_jumped_and_overlap_queues():
    engine = make_sim_engine(STEP, num_blocks=512)
    results = simulate(engine, [arrival(0.0, 0, 300, 20), arrival(100.0, 1, 300, 20),
                                arrival(200.0, 2, 300, 20), arrival(200.0, 3, 300, 20)])
    lone = results[0].latency
    assert results[0].finish_time < 100.0 and engine.clock.now() > 200.0
    # Same shape, alone: same latency, however far the clock jumped.
    assert results[1].latency == pytest.approx(lone)
    assert results[1].first_scheduled_time == 100.0
    # Two at once share steps: each is slower than alone, but far faster than one after the other.
    assert lone < results[2].latency < 1.5 * lone
    assert results[3].latency == pytest.approx(results[2].latency)


def test_arrival_during_a_step_joins_at_its_end():
    engine = make_sim_engine(STEP, num_blocks=512)
    first_step = STEP.predict(StepShape(100, 1, 0, 100, 100 * 100))
    results = simulate(engine, [arrival(0.0, 0, 100, 5), arrival(first_step / 2, 1, 100, 5)])
    assert results[1].arrival_time == first_step / 2
    assert results[1].first_scheduled_time == pytest.approx(first_step)


def test_every_request_gets_its_exact_output_length_under_memory_pressure():
    """A small KV cache forces preemptions; the engine still finishes everything, exactly."""
    rng = random.Random(0)
    engine = make_sim_engine(RooflineStepTime.builtin(), num_blocks=200, max_num_seqs=32)
    arrivals, t = [], 0.0
    for i in range(120):
        t += rng.expovariate(50.0)
        arrivals.append(arrival(t, i, rng.randint(20, 600), rng.randint(1, 300)))
    results = simulate(engine, iter(arrivals))
    assert [r.request_id for r in results] == [f"r{i}" for i in range(120)]
    assert [r.num_output_tokens for r in results] == [a.params.max_tokens for a in arrivals]
    assert all(r.finish_reason == "length" for r in results)
    assert all(r.arrival_time <= r.first_scheduled_time <= r.first_token_time <= r.finish_time for r in results)
    assert engine.scheduler.num_preemptions > 0
    assert sum(r.num_preemptions for r in results) == engine.scheduler.num_preemptions


def test_too_long_prompts_are_rejected_not_fatal():
    engine = make_sim_engine(STEP, num_blocks=16, block_size=16)  # 256 tokens of KV in all
    results = simulate(engine, [arrival(0.0, 0, 1000, 5), arrival(0.0, 1, 100, 5)])
    assert [r.finish_reason for r in results] == ["rejected", "length"]
    assert results[0].latency is None and results[1].num_output_tokens == 5
    assert "1000 tokens" in results[0].error and results[1].error is None


def test_shared_prefixes_hit_the_cache():
    engine = make_sim_engine(STEP, num_blocks=512)
    system = list(range(1000, 1320))  # 20 blocks shared by every request
    arrivals = [Arrival(float(i), system + [i], SamplingParams(max_tokens=3)) for i in range(5)]
    results = simulate(engine, arrivals)
    assert results[0].num_cached_tokens == 0
    assert all(r.num_cached_tokens == 320 for r in results[1:])
    # A hit computes only the last token: one prefill token attending to the whole context.
    assert results[1].ttft == pytest.approx(STEP.predict(StepShape(1, 1, 0, 321, 321)))
    assert results[0].ttft == pytest.approx(STEP.predict(StepShape(321, 1, 0, 321, 321 * 321)))


def test_arrivals_must_be_sorted():
    engine = make_sim_engine(STEP, num_blocks=64)
    with pytest.raises(ValueError, match="sorted"):
        simulate(engine, [arrival(1.0, 0, 10, 2), arrival(0.5, 1, 10, 2)])


def test_simulate_needs_a_virtual_clock():
    engine = LLMEngine(EngineConfig(num_blocks=64), SimulatedRunner(STEP, VirtualClock()))
    with pytest.raises(TypeError):
        simulate(engine, [])


def test_make_sim_engine_sizes_kv_from_the_model(tmp_path):
    roofline = make_sim_engine(RooflineStepTime.builtin("llama-3.1-8b", "H100-SXM"))
    assert 25_000 < roofline.config.num_blocks < 32_000
    assert roofline.runner.vocab_size == 128256
    assert roofline.config.max_num_seqs == 256  # GPU-scale defaults ...
    small = make_sim_engine(STEP, num_blocks=100, max_num_seqs=8, max_num_batched_tokens=512)
    assert small.config.max_num_seqs == 8  # ... unless given
    with pytest.raises(ValueError, match="num_blocks"):
        make_sim_engine(STEP)
    profiled = LinearStepTime(*STEP.coefficients, model={"num_blocks": 300, "block_size": 16, "vocab_size": 500})
    save_profile(tmp_path / "p.json", profiled)
    engine = make_sim_engine(tmp_path / "p.json", block_size=32)
    assert engine.config.num_blocks == 150 and engine.runner.vocab_size == 500
    assert isinstance(engine.clock, VirtualClock)


@pytest.mark.parametrize("pin_ttl_s", [10.0, None])
def test_closed_loop_sessions_reuse_their_kv(pin_ttl_s: float | None):
    """Agent sessions: each turn's follow-up extends the previous prompt and output; with a TTL pin
    the next turn finds the whole previous turn cached, though other traffic churned the cache
    (without one, that traffic evicts it)."""
    engine = make_sim_engine(STEP, num_blocks=400, max_num_seqs=16)
    think_s, turns = 2.0, 4

    def next_turn(result, token_ids):
        session, turn = result.request_id.split("/")
        if not session.startswith("agent") or int(turn) + 1 == turns:
            return []
        prompt = token_ids + [3] * 50  # the tool result
        return [Arrival(result.finish_time + think_s, prompt, SamplingParams(max_tokens=40),
                        request_id=f"{session}/{int(turn) + 1}", session_id=session, pin_ttl_s=pin_ttl_s)]

    arrivals = [Arrival(0.0, prompt(0, 500), SamplingParams(max_tokens=40), request_id="agent/0",
                        session_id="agent", pin_ttl_s=pin_ttl_s)]
    # Unrelated traffic that fills the cache while the agent thinks.
    arrivals += [Arrival(0.5 + 0.1 * i, prompt(i + 1, 1200), SamplingParams(max_tokens=20),
                         request_id=f"other{i}/0") for i in range(60)]
    results = {r.request_id: r for r in simulate(engine, sorted(arrivals, key=lambda a: a.arrival_time),
                                                  on_finish=next_turn)}
    agent = [results[f"agent/{k}"] for k in range(turns)]
    for previous, current in zip(agent, agent[1:], strict=False):
        assert current.arrival_time == pytest.approx(previous.finish_time + think_s)
        # Everything the previous turn computed, in whole blocks, is a hit.
        computed = previous.num_prompt_tokens + previous.num_output_tokens - 1
        assert current.num_cached_tokens == (computed // 16 * 16 if pin_ttl_s else 0)
    assert engine.block_manager.pins.counters.set == (turns if pin_ttl_s else 0)


def test_follow_ups_cannot_arrive_in_the_past():
    engine = make_sim_engine(STEP, num_blocks=64)
    with pytest.raises(ValueError, match="follow-up"):
        simulate(engine, [arrival(1.0, 0, 10, 2)],
                 on_finish=lambda r, ids: [Arrival(0.0, ids, SamplingParams(max_tokens=2), request_id="x")])


def test_a_stuck_engine_waits_for_the_next_arrival_then_raises(monkeypatch):
    engine = make_sim_engine(STEP, num_blocks=64)
    monkeypatch.setattr(engine, "step", lambda horizon=None: [])  # schedules nothing, ever
    with pytest.raises(RuntimeError, match="stuck at t=5.000s"):
        simulate(engine, [arrival(1.0, 0, 10, 2), arrival(5.0, 1, 10, 2)])


def test_fused_decode_steps_match_single_steps_exactly():
    """The simulator fuses pure-decode steps between events; the results must not change."""
    import random

    from engine.simulate import Arrival, make_sim_engine, simulate

    def run(fuse: bool) -> tuple[list, int]:
        engine = make_sim_engine(STEP, num_blocks=48, block_size=16, max_num_seqs=8,
                                 max_num_batched_tokens=256)
        engine._can_fuse = fuse
        rng = random.Random(7)
        arrivals, t = [], 0.0
        for i in range(60):
            t += rng.expovariate(40.0)
            prompt = [rng.randrange(1000) for _ in range(rng.randint(5, 200))]
            arrivals.append(Arrival(t, prompt, SamplingParams(max_tokens=rng.randint(1, 120)), request_id=f"r{i}",
                                    session_id=f"s{i % 5}", pin_ttl_s=0.05 if i % 3 == 0 else None))
        results = simulate(engine, arrivals)
        return [(r.request_id, r.first_token_time, r.finish_time, r.num_output_tokens, r.num_cached_tokens,
                 r.num_preemptions) for r in results], engine.num_steps

    single, single_steps = run(fuse=False)
    fused, fused_steps = run(fuse=True)
    assert single_steps == fused_steps
    assert len(fused) == len(single) == 60
    for a, b in zip(single, fused, strict=True):
        assert a[0] == b[0] and a[3:] == b[3:]
        assert a[1] == pytest.approx(b[1], rel=1e-9) and a[2] == pytest.approx(b[2], rel=1e-9)
    assert any(r[5] > 0 for r in single), "the workload should exercise preemption too"
