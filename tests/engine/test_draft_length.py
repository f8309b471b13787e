"""Goodput draft lengths (engine/draft_length.py): the policy's arithmetic, and the engine with it on the
simulator (a mixture-of-experts model where checked drafts cost weight reads, a dense one where they are
nearly free) and on the torch runner with a profile."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.batch import StepShape
from engine.config import EngineConfig, SpeculativeConfig
from engine.draft_length import GoodputDraftLength, expected_accepted
from engine.llm_engine import LLMEngine
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.simulate import Arrival, RequestResult, make_sim_engine, simulate
from engine.speculation import SpeculationCounters
from engine.step_time import LinearStepTime, save_profile
from engine.torch_runner import TorchModelRunner
from tests.engine.test_simulated_speculation import copying_turn

GOODPUT = SpeculativeConfig(draft_policy="goodput")
NOTHING = StepShape(0, 0, 0, 0, 0)


def seq(length: int = 100, acceptance: float | None = None) -> Sequence:
    s = Sequence("s", list(range(1, length + 1)), SamplingParams(max_tokens=100), 0.0)
    s.draft_acceptance = acceptance
    return s


def test_expected_accepted_drafts() -> None:
    assert expected_accepted(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_accepted(1.0, 4) == 4 and expected_accepted(0.0, 4) == 0 and expected_accepted(0.9, 0) == 0


def test_free_drafts_are_checked_in_full_and_dear_ones_only_when_they_hold() -> None:
    free = GoodputDraftLength(LinearStepTime(c0=1e-2, c_decode_seq=1e-4), SpeculationCounters())
    assert free.cap([(seq(acceptance=0.05), 4), (seq(), 2)], NOTHING, 0) == 4
    # A draft row costs a quarter of a decode step: only a request likely to be right drafts.
    dear = GoodputDraftLength(LinearStepTime(c0=1e-2, c_prefill_token=2.5e-3), SpeculationCounters())
    assert dear.cap([(seq(acceptance=0.15), 4)], NOTHING, 0) == 0
    assert dear.cap([(seq(acceptance=0.5), 4)], NOTHING, 0) == 1  # 1.5 tokens in 1.25 steps: better than 2-4
    assert dear.cap([(seq(acceptance=0.99), 4)], NOTHING, 0) == 4
    assert dear.cap([(seq(acceptance=0.99), 0)], NOTHING, 0) == 0  # nothing proposed


def test_a_request_learns_from_checked_and_from_held_back_drafts() -> None:
    counters = SpeculationCounters()
    policy = GoodputDraftLength(LinearStepTime(c0=1e-2), counters)
    s = seq()
    assert policy.acceptance(s) == 0.5  # the even prior, before anything was checked
    counters.draft_tokens, counters.accepted_tokens = 90, 9
    assert policy.acceptance(s) == pytest.approx((9 + 5) / (90 + 10))
    policy.observe(s, 4, 4)
    assert s.draft_acceptance == pytest.approx(0.5 * 0.14 + 0.5)
    policy.held_back(s, [7, 8, 9])
    assert s.held_draft == 7
    before = s.draft_acceptance
    policy.shadow(s, 3)  # the step wrote 3: the held draft would have failed
    assert s.held_draft is None and s.draft_acceptance == pytest.approx(0.5 * before)


def chat_turn(rng: random.Random) -> tuple[list[int], list[int]]:
    """Prompt and answer drawn from the same 40 tokens: their pairs recur, so the lookup finds drafts, and
    what follows a pair is a fresh draw, so nearly all of them fail."""
    words = [rng.randrange(1000, 30000) for _ in range(40)]
    return [rng.choice(words) for _ in range(500)], [rng.choice(words) for _ in range(200)]


def run(model: str, turns: list[tuple[list[int], list[int]]], speculative: SpeculativeConfig | None
        ) -> tuple[dict[str, list[int]], float, LLMEngine]:
    engine = make_sim_engine(RooflineStepTime.builtin(model), speculative=speculative)
    written: dict[str, list[int]] = {}

    def keep(result: RequestResult, token_ids: list[int]) -> list[Arrival]:
        written[result.request_id] = token_ids[result.num_prompt_tokens:]
        return []

    arrivals = [Arrival(0.0, prompt, SamplingParams(max_tokens=len(output)), request_id=f"t{i}", output_token_ids=output)
                for i, (prompt, output) in enumerate(turns)]
    results = simulate(engine, arrivals, keep)
    return written, max(r.finish_time for r in results), engine  # type: ignore[type-var]


def three_ways(model: str, turns: list[tuple[list[int], list[int]]]) -> dict[str, tuple[float, LLMEngine]]:
    """Plain, every draft checked, goodput: each run's virtual time and engine; the tokens all alike."""
    runs = {name: run(model, turns, config) for name, config in
            (("plain", None), ("fixed", SpeculativeConfig()), ("goodput", GOODPUT))}
    assert runs["plain"][0] == runs["fixed"][0] == runs["goodput"][0]
    return {name: (seconds, engine) for name, (_, seconds, engine) in runs.items()}


def test_on_a_mixture_of_experts_failing_drafts_are_held_back_and_nothing_is_lost() -> None:
    """Qwen3-30B-A3B on an H100: a drafted step reads the experts of every drafted token, so drafts that
    fail make fixed speculation slower than plain decoding; the goodput policy stays level with plain."""
    rng = random.Random(1)
    runs = three_ways("qwen3-30b-a3b", [chat_turn(rng) for _ in range(2)])
    (plain_s, _), (fixed_s, fixed), (chosen_s, chosen) = runs["plain"], runs["fixed"], runs["goodput"]
    assert fixed.spec.draft_tokens > 200 and fixed_s > 1.2 * plain_s
    assert chosen.spec.draft_tokens < fixed.spec.draft_tokens / 4 and chosen_s < 1.03 * plain_s


def test_where_drafts_are_nearly_free_they_are_checked_as_fixed_speculation_checks_them() -> None:
    rng = random.Random(2)
    runs = three_ways("llama-3.1-8b", [copying_turn(rng) for _ in range(2)])
    (plain_s, _), (fixed_s, fixed), (chosen_s, chosen) = runs["plain"], runs["fixed"], runs["goodput"]
    assert chosen.spec.accepted_tokens >= 0.9 * fixed.spec.accepted_tokens
    assert chosen_s < 1.02 * fixed_s < 0.8 * plain_s


def test_the_policy_needs_a_step_time_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="draft_policy 'tail' is not one of fixed, goodput"):
        SpeculativeConfig(draft_policy="tail")
    runner = TorchModelRunner(tiny_model_dir, 64, 4)
    with pytest.raises(ValueError, match="pass step_time_profile"):
        LLMEngine(EngineConfig(block_size=4, num_blocks=64, speculative=GOODPUT), runner)
    missing = SpeculativeConfig(draft_policy="goodput", step_time_profile=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="is not a step-time profile"):
        LLMEngine(EngineConfig(block_size=4, num_blocks=64, speculative=missing), runner)


def test_the_torch_runner_with_a_profile_answers_as_plain_decoding(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A profile that prices a draft row at a quarter of a decode step: drafts are checked only while
    they hold, and the tokens are plain decoding's either way."""
    profile = tmp_path / "profile.json"
    save_profile(profile, LinearStepTime(c0=1e-3, c_prefill_token=2.5e-4))
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True,
                            logit_bias=tuple((t, 30.0) for t in (300, 301, 302, 303)))

    def answers(speculative: SpeculativeConfig | None) -> tuple[list[list[int]], LLMEngine]:
        engine = LLMEngine(EngineConfig(block_size=4, num_blocks=256, max_model_len=512, speculative=speculative),
                           TorchModelRunner(tiny_model_dir, 256, 4))
        rng = random.Random(0)
        for i in range(3):
            engine.add_request(f"r{i}", [rng.randrange(1000) for _ in range(rng.randrange(4, 40))], params)
        out: dict[str, list[int]] = {}
        while engine.has_unfinished():
            for step in engine.step():
                out.setdefault(step.request_id, []).extend(step.new_token_ids)
        return [out[f"r{i}"] for i in range(3)], engine

    plain, _ = answers(None)
    fixed, fixed_engine = answers(SpeculativeConfig())
    chosen, engine = answers(SpeculativeConfig(draft_policy="goodput", step_time_profile=str(profile)))
    assert chosen == fixed == plain
    spec, fixed_spec = engine.stats().spec, fixed_engine.stats().spec
    assert spec.accepted_tokens > 0
    assert spec.accepted_tokens / spec.draft_tokens > fixed_spec.accepted_tokens / fixed_spec.draft_tokens


def test_a_draft_models_passes_are_priced_and_an_idle_estimate_rises() -> None:
    """With a draft model, T(d) adds its d passes: a draft as dear as the target drafts nothing that a
    free one would; a request that drafted nothing drifts toward 1, so it tries again."""
    target = LinearStepTime(c0=1e-2, c_decode_seq=1e-4, c_draft_token=1e-4)
    free = GoodputDraftLength(target, SpeculationCounters())
    dear = GoodputDraftLength(target, SpeculationCounters(), draft_step_time=LinearStepTime(c0=1e-2))
    cheap = GoodputDraftLength(target, SpeculationCounters(), draft_step_time=LinearStepTime(c0=1e-3))
    proposals = [(seq(acceptance=0.7), 4), (seq(acceptance=0.7), 4)]
    assert free.cap(proposals, NOTHING, 0) == 4 and dear.cap(proposals, NOTHING, 0) == 0
    # each pass costs a tenth of a step: the likelier the drafts hold, the more are written
    assert [cheap.cap([(seq(acceptance=a), 4)] * 2, NOTHING, 0) for a in (0.1, 0.3, 0.5, 0.7)] == [0, 1, 2, 4]
    assert cheap._drafting_seconds([(100, 4, 0.7), (100, 1, 0.7)], 3) == pytest.approx(3 * 1e-3)
    s = seq(acceptance=0.1)
    cheap.unobserved(s)
    assert s.draft_acceptance == pytest.approx(0.1 + 0.9 / 64)
    for _ in range(400):
        cheap.unobserved(s)
    assert s.draft_acceptance > 0.99
