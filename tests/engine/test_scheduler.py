"""Scheduler and engine loop invariants, driven by a counting runner."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import VirtualClock
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.policy import PriorityPolicy
from engine.sampling_params import InvalidRequestError, SamplingParams
from tests.engine.fakes import CountingRunner


def make_engine(**overrides) -> tuple[LLMEngine, CountingRunner]:
    config = EngineConfig(**{"block_size": 4, "num_blocks": 64, "max_num_batched_tokens": 32,
                             "long_prefill_token_threshold": 16, "max_num_seqs": 8, **overrides})
    runner = CountingRunner(eos_token_ids=(0,))
    return LLMEngine(config, runner, clock=VirtualClock()), runner


def run_all(engine: LLMEngine, limit: int = 10_000) -> dict[str, list[int]]:
    outputs: dict[str, list[int]] = {}
    for _ in range(limit):
        if not engine.has_unfinished():
            return outputs
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
    raise AssertionError("engine did not drain")


def test_token_budget_chunked_prefill_and_exact_lengths() -> None:
    engine, runner = make_engine()
    lengths = {f"r{i}": random.Random(i).randint(1, 20) for i in range(12)}
    for i, (rid, n) in enumerate(lengths.items()):
        engine.add_request(rid, list(range(100 + i, 100 + i + 5 + 7 * i)), SamplingParams(max_tokens=n))
    outputs = run_all(engine)
    assert {rid: len(toks) for rid, toks in outputs.items()} == lengths
    for step in runner.batches:
        assert sum(n for _, _, n in step) <= 32
        assert all(n <= 16 for _, _, n in step)
        assert len(step) <= 8
    # Long prompts were split across steps.
    assert any(n == 16 for step in runner.batches for _, _, n in step)
    stats = engine.stats()
    assert stats.blocks.used == 0 and stats.num_running == stats.num_waiting == 0


def test_preemption_by_recompute_under_memory_pressure() -> None:
    engine, runner = make_engine(num_blocks=12, max_num_seqs=8)
    for i in range(6):
        engine.add_request(f"r{i}", [i * 50 + t for t in range(6)], SamplingParams(max_tokens=14))
    outputs = run_all(engine)
    assert all(len(t) == 14 for t in outputs.values()) and len(outputs) == 6
    assert engine.scheduler.num_preemptions > 0
    assert engine.stats().blocks.used == 0


def test_eos_and_max_tokens_and_context_limit() -> None:
    engine, runner = make_engine(max_model_len=20)
    runner.eos_at = 3
    engine.add_request("eos", [1, 2, 3], SamplingParams(max_tokens=10))
    engine.add_request("ignore", [1, 2, 3], SamplingParams(max_tokens=5, ignore_eos=True))
    engine.add_request("ctx", list(range(10)), SamplingParams(max_tokens=50, ignore_eos=True))
    outs = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                outs[o.request_id] = (o.num_output_tokens, o.finish_reason)
    assert outs == {"eos": (4, "stop"), "ignore": (5, "length"), "ctx": (10, "length")}


def test_bad_requests_are_rejected() -> None:
    engine, _ = make_engine(max_model_len=16)
    with pytest.raises(InvalidRequestError):
        engine.add_request("long", list(range(16)), SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request("empty", [], SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request("ttl", [1], SamplingParams(), pin_ttl_s=-1)
    with pytest.raises(InvalidRequestError):
        SamplingParams(temperature=-1)


def test_priority_policy_serves_urgent_first() -> None:
    config = EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=8, max_num_seqs=8,
                          long_prefill_token_threshold=8)
    engine = LLMEngine(config, CountingRunner(), clock=VirtualClock(), policy=PriorityPolicy())
    engine.add_request("late", list(range(8)), SamplingParams(max_tokens=1), priority=5)
    engine.add_request("urgent", list(range(8, 16)), SamplingParams(max_tokens=1), priority=0)
    first = engine.step()
    assert [o.request_id for o in first] == ["urgent"]


def test_prefix_cache_hit_reported_as_cached_tokens() -> None:
    engine, _ = make_engine()
    prompt = list(range(200, 230))
    engine.add_request("a", prompt, SamplingParams(max_tokens=2))
    run_all(engine)
    engine.add_request("b", prompt + [5, 6], SamplingParams(max_tokens=2))
    done = [o for o in sum((engine.step() for _ in range(10)), []) if o.finished]
    assert done[0].num_cached_tokens == 28  # 7 full blocks of 4


def test_pinned_session_survives_a_flood_and_unpinned_does_not() -> None:
    def second_turn_cached(pin_ttl: float | None) -> int:
        engine, _ = make_engine(num_blocks=40, pin_budget_fraction=0.5, max_num_seqs=3)
        clock = engine.clock
        turn1 = list(range(1000, 1040))
        engine.add_request("t1", turn1, SamplingParams(max_tokens=4), session_id="s", pin_ttl_s=pin_ttl)
        run_all(engine)
        for i in range(30):  # other traffic cycles through every free block
            engine.add_request(f"f{i}", [5000 + i * 40 + t for t in range(30)], SamplingParams(max_tokens=4))
        run_all(engine)
        clock.advance(1.0)
        engine.add_request("t2", turn1 + [1, 2, 3, 4, 9, 9], SamplingParams(max_tokens=2), session_id="s")
        outs = run_all(engine)
        assert "t2" in outs
        return engine.stats().pins.hit_tokens, engine.block_manager.prefix_hit_tokens

    pinned_hits, _ = second_turn_cached(pin_ttl=5.0)
    unpinned_hits, prefix_hits = second_turn_cached(pin_ttl=None)
    assert pinned_hits == 40 and unpinned_hits == 0
    assert prefix_hits == 0  # the flood evicted the unpinned prefix


def test_pins_expire_on_the_clock() -> None:
    engine, _ = make_engine()
    engine.add_request("t1", list(range(40)), SamplingParams(max_tokens=2), session_id="s", pin_ttl_s=2.0)
    run_all(engine)
    assert engine.stats().blocks.pinned == 10
    assert engine.session_info("s")["pinned_blocks"] == 10
    engine.clock.advance(2.5)
    engine.add_request("other", [1, 2], SamplingParams(max_tokens=1))
    run_all(engine)
    assert engine.stats().blocks.pinned == 0 and engine.stats().pins.expired == 1
    # Re-pin what is still cached through the control operation.
    assert engine.pin_session("s", 3.0) == 10
    assert engine.extend_session_pin("s", 10.0) and engine.unpin_session("s")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_workloads_keep_scheduler_invariants(data: st.DataObject) -> None:
    """Random arrivals, shared prefixes, sessions with pins, tight memory: every step respects the
    budgets, blocks balance, and every request ends with exactly the tokens it asked for."""
    num_blocks = data.draw(st.integers(12, 40))
    engine, runner = make_engine(num_blocks=num_blocks, max_num_seqs=data.draw(st.integers(1, 6)),
                                 pin_budget_fraction=data.draw(st.sampled_from([0.0, 0.3, 0.6])))
    config, bm = engine.config, engine.block_manager
    wanted: dict[str, int] = {}
    produced: dict[str, int] = {}
    requests = data.draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 30), st.integers(1, 12),
                                            st.integers(0, 3), st.booleans()), min_size=1, max_size=12))
    pending = list(enumerate(requests))
    steps = 0
    while pending or engine.has_unfinished():
        if pending and (not engine.has_unfinished() or data.draw(st.booleans())):
            i, (prefix, extra, max_tokens, session, pin) = pending.pop(0)
            prompt = [1] * (prefix * 4) + [100 + i * 31 + t for t in range(extra)]
            prompt = prompt[: config.max_model_len - 1]
            wanted[f"r{i}"] = min(max_tokens, config.max_model_len - len(prompt))
            engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                               session_id=f"s{session}", pin_ttl_s=1.0 if pin else None)
        engine.clock.advance(data.draw(st.sampled_from([0.0, 0.3])))
        for out in engine.step():
            produced[out.request_id] = produced.get(out.request_id, 0) + len(out.new_token_ids)
        steps += 1
        assert steps < 5_000, "no progress"
        if runner.batches:
            last = runner.batches[-1]
            assert sum(n for _, _, n in last) <= config.max_num_batched_tokens
            assert len(last) <= config.max_num_seqs
        running = engine.scheduler.running
        assert len(running) <= config.max_num_seqs
        refs = [0] * bm.num_blocks
        for seq in running:
            assert len(seq.block_table) * config.block_size >= seq.num_computed_tokens
            for b in seq.block_table:
                refs[b] += 1
        for seq in engine.scheduler.waiting:
            assert not seq.block_table
        for pin in bm.pins.pins.values():
            for b in pin.block_ids:
                refs[b] += 1
        assert [b.ref_count for b in bm.blocks] == refs
        assert bm.pins.num_pinned_blocks <= bm.pin_budget_blocks
    assert produced == wanted


@pytest.mark.parametrize("whole_prompt", [True, False])
def test_long_prompt_waits_until_it_fits_instead_of_preempting(whole_prompt: bool) -> None:
    # 24 blocks of 4 tokens; two decoding requests grow to 10 blocks each. A 76-token prompt (19 blocks)
    # admitted on its first chunk grows into their memory and forces recomputes; admitted only once it
    # fits, it waits for them and nothing is recomputed.
    engine, _ = make_engine(num_blocks=24, admit_whole_prompt=whole_prompt)
    for i in range(2):
        engine.add_request(f"s{i}", [10 + 40 * i + t for t in range(8)], SamplingParams(max_tokens=30))
    engine.step()
    engine.add_request("long", list(range(500, 576)), SamplingParams(max_tokens=4))
    outputs = run_all(engine)
    assert {rid: len(t) for rid, t in outputs.items()} == {"s0": 29, "s1": 29, "long": 4}
    assert (engine.scheduler.num_preemptions == 0) is whole_prompt
    assert engine.stats().blocks.used == 0


def test_samples_of_one_prompt_compute_it_once() -> None:
    """n samples: the others wait while the first computes the prompt (chunked over several steps),
    then take its blocks from the prefix cache and compute only the partial last block."""
    engine, _ = make_engine()
    prompt = list(range(100, 150))  # 50 tokens: 12 full blocks of 4, then 2
    engine.add_request("s-0", prompt, SamplingParams(max_tokens=3))
    for i in (1, 2, 3):
        engine.add_request(f"s-{i}", prompt, SamplingParams(max_tokens=3), prompt_leader="s-0")
    outputs = run_all(engine)
    assert sorted(outputs) == ["s-0", "s-1", "s-2", "s-3"] and all(len(o) == 3 for o in outputs.values())
    assert engine.prefill_tokens == 50 + 3 * 2
    alone, _ = make_engine()  # without a leader, samples admitted in the same steps each compute it
    for i in range(4):
        alone.add_request(f"s-{i}", prompt, SamplingParams(max_tokens=3))
    run_all(alone)
    assert alone.prefill_tokens > 50 + 3 * 2


def test_a_sample_does_not_wait_for_a_leader_that_is_not_running() -> None:
    engine, _ = make_engine()
    prompt = list(range(100, 150))
    engine.add_request("s-0", prompt, SamplingParams(max_tokens=3))
    engine.add_request("s-1", prompt, SamplingParams(max_tokens=3), prompt_leader="s-0")
    engine.step()  # the leader is computing the prompt
    engine.abort("s-0")
    assert list(run_all(engine)) == ["s-1"]
