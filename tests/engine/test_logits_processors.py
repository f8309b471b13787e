"""Logits processing and distribution cuts, against hand-computed rows and against transformers' own
processors: OpenAI's presence and frequency penalties, the repetition penalty, logit_bias, min_tokens,
and min-p, top-k and top-p applied in vLLM's order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from engine.model.logits_processors import process_logits
from engine.model.sampler import Sampler, truncated
from engine.sampling_params import InvalidRequestError, SamplingParams

VOCAB = 12
EOS = (11,)


@dataclass
class Row:
    params: SamplingParams
    prompt: list[int]
    output: list[int] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt)


def random_logits(rows: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def test_a_batch_that_asks_for_nothing_is_untouched() -> None:
    logits = random_logits(2)
    rows = [Row(SamplingParams(), [1, 2], [3]), Row(SamplingParams(temperature=0.0, min_tokens=1), [4], [5])]
    assert process_logits(logits, rows, EOS) is logits


def test_presence_and_frequency_count_the_output_only() -> None:
    logits = torch.zeros(1, VOCAB)
    row = Row(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), prompt=[3, 7], output=[3, 3, 5])
    out = process_logits(logits, [row], EOS)[0]
    expected = torch.zeros(VOCAB)
    expected[3] = -(2 * 0.5 + 0.25)
    expected[5] = -(1 * 0.5 + 0.25)
    assert torch.equal(out, expected)  # token 7 is only in the prompt: OpenAI's penalties ignore it
    assert torch.equal(logits, torch.zeros(1, VOCAB))  # the caller's logits (the raw logprobs) are kept


def test_the_repetition_penalty_comes_before_frequency_and_presence_as_in_vllm() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 4] = 2.0
    row = Row(SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0), prompt=[0], output=[4])
    assert process_logits(logits, [row], EOS)[0, 4].item() == 2.0 / 2.0 - 1.0  # not (2.0 - 1.0) / 2.0


def test_negative_penalties_encourage_repeats() -> None:
    row = Row(SamplingParams(frequency_penalty=-1.0), prompt=[0], output=[4, 4])
    assert process_logits(torch.zeros(1, VOCAB), [row], EOS)[0, 4].item() == 2.0


def test_repetition_penalty_matches_transformers() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = random_logits(2)
    rows = [Row(SamplingParams(repetition_penalty=1.3), prompt=[1, 2, 2], output=[5, 9]),
            Row(SamplingParams(repetition_penalty=0.7), prompt=[0], output=[3, 3, 10])]
    ours = process_logits(logits, rows, EOS)
    for i, row in enumerate(rows):
        theirs = RepetitionPenaltyLogitsProcessor(row.params.repetition_penalty)(
            torch.tensor([row.token_ids]), logits[i:i + 1].clone())
        assert torch.allclose(ours[i], theirs[0])
    assert not torch.equal(ours, logits)


def test_logit_bias_adds_and_min_tokens_masks_the_stop_tokens() -> None:
    logits = torch.zeros(3, VOCAB)
    rows = [
        Row(SamplingParams(logit_bias=((2, 5.0), (6, -100.0))), [1]),
        Row(SamplingParams(min_tokens=2, stop_token_ids=(4,)), [1], output=[0]),  # one token so far
        Row(SamplingParams(min_tokens=2, stop_token_ids=(4,), ignore_eos=True), [1]),
    ]
    out = process_logits(logits, rows, EOS)
    assert out[0, 2] == 5.0 and out[0, 6] == -100.0 and out[0].count_nonzero() == 2
    assert out[1, 4] == out[1, 11] == -torch.inf and out[1].isfinite().sum() == VOCAB - 2
    assert out[2, 4] == -torch.inf and out[2, 11] == 0.0  # EOS is no stop when it is ignored
    done = Row(SamplingParams(min_tokens=2, stop_token_ids=(4,)), [1], output=[0, 3])
    assert torch.equal(process_logits(torch.zeros(1, VOCAB), [done], EOS), torch.zeros(1, VOCAB))


def test_processing_only_touches_the_rows_that_ask() -> None:
    logits = random_logits(3)
    rows = [Row(SamplingParams(), [1], [1]), Row(SamplingParams(presence_penalty=1.0), [1], [1]),
            Row(SamplingParams(), [2], [2])]
    out = process_logits(logits, rows, EOS)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    assert out[1, 1] == logits[1, 1] - 1.0


def hf_cut(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """transformers' warpers in vLLM's order (min-p, top-k, top-p), each on what the last left."""
    from transformers import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = logits[None].clone()
    if params.min_p > 0:
        scores = MinPLogitsWarper(params.min_p)(None, scores)
    if params.top_k > 0:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    return torch.softmax(scores[0], dim=-1)


@pytest.mark.parametrize("params", [
    SamplingParams(top_k=3), SamplingParams(min_p=0.2), SamplingParams(top_p=0.6),
    SamplingParams(top_k=5, top_p=0.5), SamplingParams(min_p=0.05, top_k=4, top_p=0.8),
    SamplingParams(top_k=1),
])
def test_cuts_keep_what_transformers_keeps(params: SamplingParams) -> None:
    logits = random_logits(8, vocab=40, seed=3)
    probs = torch.softmax(logits, dim=-1)
    ours = truncated(probs, [params] * 8)
    for i in range(8):
        kept = ours[i] / ours[i].sum()
        assert torch.allclose(kept, hf_cut(logits[i], params), atol=1e-6)


def test_top_k_draws_follow_the_renormalized_top_tokens() -> None:
    logits = random_logits(1, vocab=40, seed=4)
    params = SamplingParams(top_k=3, temperature=1.0)
    tokens = Sampler()(logits.repeat(20000, 1), [params] * 20000, [0] * 20000)
    expected = hf_cut(logits[0], params)
    found = torch.bincount(torch.tensor(tokens), minlength=40).float() / 20000
    assert set(torch.tensor(tokens).unique().tolist()) == set(expected.nonzero().flatten().tolist())
    assert torch.allclose(found, expected, atol=0.015)


@pytest.mark.parametrize("fields", [
    {"presence_penalty": 2.1}, {"frequency_penalty": -2.5}, {"repetition_penalty": 0.0},
    {"repetition_penalty": 2.5}, {"top_k": -3}, {"min_p": -0.1}, {"min_tokens": -1},
    {"logit_bias": ((-1, 1.0),)}, {"logit_bias": ((3, 100.5),)}, {"logit_bias": ((3, float("nan")),)},
    {"prompt_logprobs": 21},
])
def test_out_of_range_values_are_refused(fields: dict) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        SamplingParams(**fields)
    assert raised.value.param == next(iter(fields))
