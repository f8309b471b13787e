"""Speculative decoding in the simulator: the simulated runner checks drafts against what it writes
(a replayed real output, or its placeholders), and the step-time models price the drafted rows."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from engine.async_engine import AsyncEngine
from engine.batch import ScheduledBatch, StepShape
from engine.build import build_engine
from engine.config import SpeculativeConfig
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import Arrival, RequestResult, make_sim_engine, simulate
from engine.speculation import lookup_draft
from engine.step_time import LinearStepTime, save_profile

H100_8B = RooflineStepTime.builtin("llama-3.1-8b")
SPEC = SpeculativeConfig()  # 4 drafts, suffixes of 4 down to 2 tokens


def copying_turn(rng: random.Random, prompt_len: int = 600, output_len: int = 160) -> tuple[list[int], list[int]]:
    """A prompt of random tokens and an output that copies stretches of it with a few fresh tokens in
    between (an agent quoting a file it read): drafts match where it copies."""
    prompt = [rng.randrange(1, 30000) for _ in range(prompt_len)]
    output: list[int] = []
    while len(output) < output_len:
        start = rng.randrange(prompt_len - 40)
        output += prompt[start: start + rng.randrange(5, 30)] + [rng.randrange(1, 30000)]
    return prompt, output[:output_len]


def replayed_steps(prompt: list[int], output: list[int], config: SpeculativeConfig) -> int:
    """Decode steps to write `output` with the engine's lookup: each step keeps the matching drafts plus one
    (none drafted for the first token: the prefill writes it; none past max_tokens)."""
    tokens = np.array(prompt + output, dtype=np.int64)
    at, end, steps = len(prompt) + 1, len(prompt) + len(output), 0
    while at < end:
        drafts = lookup_draft(tokens[:at], min(config.num_speculative_tokens, end - at - 1),
                              config.prompt_lookup_min, config.prompt_lookup_max)
        kept = next((i for i, d in enumerate(drafts) if d != tokens[at + i]), len(drafts))
        at += kept + 1
        steps += 1
    return steps


def run(turns: list[tuple[list[int], list[int]]], speculative: SpeculativeConfig | None, *, scripted: bool = True,
        gap_s: float = 0.0, **config) -> tuple[list[RequestResult], dict[str, list[int]], object]:
    engine = make_sim_engine(H100_8B, speculative=speculative, **config)
    written: dict[str, list[int]] = {}
    arrivals = [Arrival(i * gap_s, prompt, SamplingParams(max_tokens=len(output)), request_id=f"t{i}",
                        output_token_ids=output if scripted else None)
                for i, (prompt, output) in enumerate(turns)]

    def keep(result: RequestResult, token_ids: list[int]) -> list[Arrival]:
        written[result.request_id] = token_ids[result.num_prompt_tokens:]
        return []

    return simulate(engine, arrivals, keep), written, engine


def test_a_replayed_output_is_written_as_scripted_with_and_without_speculation() -> None:
    rng = random.Random(3)
    turns = [copying_turn(rng) for _ in range(6)]
    _, plain, plain_engine = run(turns, None, gap_s=0.01)
    results, fast, engine = run(turns, SPEC, gap_s=0.01)
    assert plain == fast == {f"t{i}": output for i, (_, output) in enumerate(turns)}
    assert all(r.finish_reason == "length" for r in results)
    assert engine.spec.accepted_tokens > 0 and engine.num_steps < plain_engine.num_steps


def test_one_request_takes_the_steps_a_replay_of_its_drafts_predicts() -> None:
    rng = random.Random(5)
    for _ in range(4):
        prompt, output = copying_turn(rng, output_len=rng.randrange(40, 200))
        [result], written, engine = run([(prompt, output)], SPEC)
        assert written["t0"] == output
        chunk = min(engine.config.max_num_batched_tokens, engine.config.long_prefill_token_threshold)
        prefill_steps = -(-len(prompt) // chunk)
        assert engine.num_steps == prefill_steps + replayed_steps(prompt, output, SPEC)
        assert engine.spec.accepted_tokens == len(output) - 1 - (engine.num_steps - prefill_steps)


def test_speculation_saves_virtual_time_for_one_sequence_and_costs_it_at_a_large_batch() -> None:
    """On an H100 roofline a decode of one sequence is weight-bound, so checking drafts is nearly free and
    every accepted draft saves a step; 256 sequences of 500 tokens with 4 drafts each are compute-bound."""
    one = H100_8B.predict(StepShape(0, 0, 1, 4000, 0))
    one_drafted = H100_8B.predict(StepShape(0, 0, 1, 4004, 4 * 4004, draft_tokens=4))
    assert one < one_drafted < 1.05 * one
    many = H100_8B.predict(StepShape(0, 0, 256, 256 * 500, 0))
    many_drafted = H100_8B.predict(StepShape(0, 0, 256, 256 * 504, 256 * 4 * 504, draft_tokens=256 * 4))
    assert many_drafted > 2.5 * many

    rng = random.Random(11)
    turn = copying_turn(rng, output_len=300)
    [plain], _, _ = run([turn], None)
    [fast], _, engine = run([turn], SPEC)
    assert engine.spec.accepted_tokens > 100
    decode = (plain.finish_time - plain.first_token_time, fast.finish_time - fast.first_token_time)
    assert decode[1] < 0.7 * decode[0]


def test_a_drafted_decode_is_shaped_as_one_decode_plus_its_draft_rows() -> None:
    seq = Sequence("a", list(range(1, 101)), SamplingParams(max_tokens=50), 0.0)
    seq.token_ids.append(7)
    seq.num_computed_tokens = 100
    batch = ScheduledBatch()
    batch.add(seq, 4, draft_token_ids=[1, 2, 3])
    shape = batch.shape
    assert (shape.prefill_tokens, shape.prefill_seqs, shape.decode_seqs, shape.draft_tokens) == (0, 0, 1, 3)
    assert shape.kv_tokens == 104 and shape.prefill_attention == 3 * 104 and shape.num_tokens == 4
    linear = LinearStepTime(c0=1e-3, c_prefill_token=1e-5, c_decode_seq=1e-4)
    assert linear.predict(shape) == pytest.approx(1e-3 + 3e-5 + 1e-4)


def test_placeholder_outputs_are_the_same_with_speculation_and_an_eos_in_a_script_stops_it() -> None:
    rng = random.Random(2)
    # Placeholders seldom repeat, but a prompt that holds some makes lookups find them.
    turns = [copying_turn(rng) for _ in range(3)]
    _, plain, _ = run(turns, None, scripted=False)
    _, fast, _ = run(turns, SPEC, scripted=False)
    assert plain == fast

    eos = 5
    prompt, output = copying_turn(rng)
    output = [t if t != eos else 6 for t in output]
    output[120] = eos
    engine = make_sim_engine(H100_8B, speculative=SPEC, eos_token_ids=(eos,))
    [result] = simulate(engine, [Arrival(0.0, prompt, SamplingParams(max_tokens=len(output)),
                                         output_token_ids=output)])
    assert (result.finish_reason, result.num_output_tokens) == ("stop", 121)


def test_a_script_needs_a_simulated_runner() -> None:
    class NotSimulated:
        eos_token_ids = ()

    engine = make_sim_engine(H100_8B)
    engine.runner = NotSimulated()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="simulated runner"):
        simulate(engine, [Arrival(0.0, [1, 2, 3], SamplingParams(max_tokens=2), output_token_ids=[4, 5])])
    assert not engine.has_unfinished()


def test_a_served_simulation_speculates_and_answers_as_without(tmp_path: Path) -> None:
    """`pitstop engine serve --sim ... --speculative-config ...`: ASCII placeholders (128 ids) recur in a
    long prompt often enough to be drafted; the text is the one plain decoding serves."""
    profile = tmp_path / "fast.json"
    save_profile(profile, LinearStepTime(c0=2e-4))
    prompt = "".join(random.Random(4).choice("abcdefghij klmnop\n") for _ in range(3000))

    async def generate(engine: AsyncEngine) -> tuple[str, str | None]:
        params = SamplingParams(max_tokens=300, ignore_eos=True)
        outputs = [o async for o in engine.generate(prompt, params, request_id="same")]  # placeholders' salt
        await engine.shutdown()
        return "".join(o.text_delta for o in outputs), outputs[-1].finish_reason

    def serve(speculative: SpeculativeConfig | None) -> tuple[str, int]:
        engine = build_engine(sim_profile=profile, num_blocks=512, speculative=speculative)
        text, finish_reason = asyncio.run(generate(engine))
        assert finish_reason == "length"
        return text, engine.engine.spec.drafted_steps

    (fast, drafted), (plain, _) = serve(SPEC), serve(None)
    assert fast == plain and drafted > 0
