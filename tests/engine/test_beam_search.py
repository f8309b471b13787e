"""Beam search (engine/beam_search.py): on a transformers-saved checkpoint with random weights, the beams
equal transformers' own beam search (`generate(num_beams=...)`) token for token, best first, with its
scores; a step's beams share their prefix through the cache; and on scripted log-probabilities, an ending
among a step's best ends its beam while the rest go on, the length penalty orders the answers, and an EOS
below the step's best is passed over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import torch

from engine.beam_search import Beam, BeamSearchParams, beam_search
from engine.build import build_engine
from engine.byte_tokenizer import ByteTokenizer
from engine.logprobs import TokenLogprobs
from engine.outputs import RequestOutput
from engine.sampling_params import InvalidRequestError, SamplingParams
from tests.engine.hf_checkpoints import random_prompt, save_hf_model


def transformers_beams(model_dir: Path, prompt: list[int], width: int, max_new_tokens: int,
                       length_penalty: float) -> tuple[list[list[int]], list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = model.generate(torch.tensor([prompt]), do_sample=False, num_beams=width, num_return_sequences=width,
                         max_new_tokens=max_new_tokens, length_penalty=length_penalty, eos_token_id=None,
                         pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    return [row[len(prompt):].tolist() for row in out.sequences], out.sequences_scores.tolist()


@pytest.mark.parametrize(("kind", "width", "length_penalty"), [("qwen2", 3, 1.0), ("llama3", 4, 0.5)])
def test_beams_equal_transformers_beam_search(tmp_path: Path, kind: str, width: int, length_penalty: float) -> None:
    model_dir = save_hf_model(kind, tmp_path / kind)
    prompt, steps = random_prompt(21, seed=5), 7
    expected, scores = transformers_beams(model_dir, prompt, width, steps, length_penalty)

    async def search() -> object:
        engine = build_engine(model_dir, tokenizer=ByteTokenizer(), num_blocks=128, block_size=4, max_model_len=128)
        await engine.start()
        try:
            def generate(ids: Sequence[int], params: SamplingParams, rid: str) -> AsyncIterator[RequestOutput]:
                return engine.generate(list(ids), params, rid)
            return await beam_search(generate, prompt, BeamSearchParams(width, steps, length_penalty, ignore_eos=True,
                                                                        logprobs=2 * width + 1),
                                     eos_ids=(), max_model_len=engine.max_model_len, request_id="beam")
        finally:
            await engine.shutdown()

    result = asyncio.run(search())
    assert [list(b.token_ids) for b in result.beams] == expected  # type: ignore[attr-defined]
    assert [b.score(length_penalty) for b in result.beams] == pytest.approx(scores, abs=1e-4)  # type: ignore[attr-defined]
    assert all(b.finish_reason == "length" for b in result.beams)  # type: ignore[attr-defined]
    # Each token's log-probability sums to the beam's; its alternatives are the step's likeliest, more of them
    # than the ranking's 2 x width, the token among them.
    for beam in result.beams:  # type: ignore[attr-defined]
        assert sum(lp.logprob for lp in beam.logprobs) == pytest.approx(beam.cum_logprob, abs=1e-5)
        for token, lp in zip(beam.token_ids, beam.logprobs, strict=True):
            assert len(lp.top_ids) == 2 * width + 1 and list(lp.top_logprobs) == sorted(lp.top_logprobs, reverse=True)
            assert lp.top_logprobs[lp.top_ids.index(token)] == pytest.approx(lp.logprob)
    # The first step prefills the prompt once; later ones compute about the last block of each beam.
    computed = result.computed_tokens  # type: ignore[attr-defined]
    assert computed[0] == len(prompt) and max(computed[1:]) <= width * 4


class Scripted:
    """An engine's generate whose next-token log-probabilities are a function of the sequence so far."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], prompt_len: int) -> None:
        self.table, self.prompt_len, self.calls = table, prompt_len, 0

    async def __call__(self, ids: Sequence[int], params: SamplingParams, rid: str) -> AsyncIterator[RequestOutput]:
        self.calls += 1
        options = sorted(self.table[tuple(ids[self.prompt_len:])].items(), key=lambda kv: -kv[1])
        options = options[:params.logprobs]
        top = TokenLogprobs(options[0][1], tuple(t for t, _ in options), tuple(lp for _, lp in options))
        yield RequestOutput(rid, [options[0][0]], "", True, "length", len(ids), 0, 1, logprobs=[top])


EOS = 9


def run(scripted: Scripted, params: BeamSearchParams) -> list[Beam]:
    result = asyncio.run(beam_search(scripted, [1, 2], params, eos_ids=(EOS,), max_model_len=100, request_id="r"))
    return result.beams


def test_an_ending_among_the_best_ends_its_beam_and_the_others_go_on() -> None:
    table = {(): {3: -0.1, 4: -0.5, EOS: -3.0},
             (3,): {EOS: -0.2, 5: -0.3, 6: -4.0}, (4,): {5: -0.4, EOS: -2.5, 6: -5.0},
             (3, 5): {7: -0.1, EOS: -2.0}, (4, 5): {7: -0.2, EOS: -3.0},
             (3, 5, 7): {EOS: -0.1, 8: -1.0}, (4, 5, 7): {EOS: -0.3, 8: -2.0}}
    scripted = Scripted(table, 2)
    beams = run(scripted, BeamSearchParams(width=2, max_tokens=4, length_penalty=0.0))
    # Step 2 ends (3, EOS) at -0.3 and goes on with (3, 5) and (4, 5); step 4 ends (3, 5, 7, EOS) at -0.6
    # and (4, 5, 7, EOS) at -1.4, ahead of the unfinished (3, 5, 7, 8) at -1.5.
    assert [(b.token_ids, b.finish_reason) for b in beams] == [((3, EOS), "stop"), ((3, 5, 7, EOS), "stop")]
    assert [b.cum_logprob for b in beams] == pytest.approx([-0.3, -0.6])
    assert scripted.calls == 1 + 2 + 2 + 2  # two live beams a step after the first


def test_the_length_penalty_orders_the_answers() -> None:
    table = {(): {3: -0.1, 4: -0.2, EOS: -5.0},
             (3,): {EOS: -0.25, 5: -1.2}, (4,): {5: -0.1, EOS: -6.0},
             (3, 5): {7: -0.1}, (4, 5): {7: -0.1}}
    # Finished: (3, EOS) -0.35 over 1 token; unfinished: (4, 5, 7) -0.4 and (3, 5, 7) -1.4 over 3.
    plain = run(Scripted(table, 2), BeamSearchParams(width=2, max_tokens=3, length_penalty=0.0))
    assert [(b.token_ids, b.finish_reason) for b in plain] == [((3, EOS), "stop"), ((4, 5, 7), "length")]
    favour_long = run(Scripted(table, 2), BeamSearchParams(width=2, max_tokens=3, length_penalty=2.0))
    assert [b.token_ids for b in favour_long] == [(4, 5, 7), (3, 5, 7)]  # -0.044 and -0.156 against -0.35
    assert favour_long[0].score(2.0) == pytest.approx(-0.4 / 9)


def test_an_ending_below_the_step_best_is_passed_over() -> None:
    table = {(): {3: -0.1, 4: -0.2}, (3,): {EOS: -0.05, 5: -0.2}, (4,): {EOS: -0.15, 6: -0.2}}
    # Step 2 ranks (3, EOS) -0.15, (3, 5) -0.3, (4, EOS) -0.35, (4, 6) -0.4: the third is an ending outside
    # the best two, so it is not kept, though a penalty favouring short answers (-1) would rank it second.
    beams = run(Scripted(table, 2), BeamSearchParams(width=2, max_tokens=2, length_penalty=-1.0))
    assert [b.token_ids for b in beams] == [(3, EOS), (3, 5)]


def test_a_beam_whose_likeliest_token_ends_it_goes_on_with_its_next() -> None:
    # Each beam sees 2 x width alternatives, so (EOS) ending leaves (3) to go on: (3, 5) -0.17 over 2 tokens
    # beats (EOS) -0.15 over 1.
    table = {(): {EOS: -0.15, 3: -0.16}, (3,): {5: -0.01}}
    scripted = Scripted(table, 2)
    beams = run(scripted, BeamSearchParams(width=1, max_tokens=2))
    assert [(b.token_ids, b.finish_reason) for b in beams] == [((3, 5), "length")]
    assert scripted.calls == 2


def test_bad_widths_are_refused() -> None:
    for width in (0, 11):
        with pytest.raises(InvalidRequestError) as refused:
            BeamSearchParams(width=width, max_tokens=4)
        assert refused.value.param == "n"
