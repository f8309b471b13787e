"""Sampler: greedy rows, temperature and top-p distributions, and seeded reproducibility that does not
depend on what else is in the batch."""

from __future__ import annotations

import torch

from engine.model.sampler import Sampler
from engine.sampling_params import SamplingParams

VOCAB = 50


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def frequencies(tokens: list[int], size: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=size).float() / len(tokens)


def test_greedy_rows_take_the_argmax() -> None:
    logits = random_logits(4)
    params = [SamplingParams(temperature=0.0)] * 4
    assert Sampler()(logits, params, [0] * 4) == logits.argmax(-1).tolist()


def test_seeded_rows_are_reproducible_whatever_the_batch() -> None:
    sampler = Sampler()
    logits = random_logits(1).repeat(3, 1)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = [sampler(logits[:1], [seeded], [step])[0] for step in range(40)]
    mixed = [
        sampler(logits, [SamplingParams(temperature=1.0), seeded, SamplingParams(temperature=0.0)], [7, step, 0])[1]
        for step in range(40)
    ]
    assert alone == mixed
    assert len(set(alone)) > 5  # the step number reseeds: not the same draw every time
    other_seed = [sampler(logits[:1], [SamplingParams(temperature=1.0, seed=99)], [step])[0] for step in range(40)]
    assert other_seed != alone


def test_temperature_one_matches_softmax_and_low_temperature_is_near_greedy() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    tokens = Sampler()(logits, [SamplingParams(temperature=1.0)] * 20000, [0] * 20000)
    assert torch.allclose(frequencies(tokens, 4), torch.softmax(logits[0], -1), atol=0.015)
    cold = Sampler()(logits[:2000], [SamplingParams(temperature=0.05)] * 2000, [0] * 2000)
    assert set(cold) == {0}
    hot = Sampler()(logits, [SamplingParams(temperature=2.0)] * 20000, [0] * 20000)
    assert torch.allclose(frequencies(hot, 4), torch.softmax(logits[0] / 2.0, -1), atol=0.015)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(20000, 1)
    tokens = Sampler()(logits, [SamplingParams(temperature=1.0, top_p=0.7)] * 20000, [0] * 20000)
    assert torch.allclose(frequencies(tokens, 4), torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015)
    tiny = Sampler()(random_logits(64), [SamplingParams(temperature=1.5, top_p=1e-6)] * 64, [0] * 64)
    assert tiny == random_logits(64).argmax(-1).tolist()


def test_rows_keep_their_own_params() -> None:
    torch.manual_seed(0)
    logits = random_logits(3)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_p=1e-6),
        SamplingParams(temperature=1.0, top_p=0.9, seed=5),
    ]
    tokens = Sampler()(logits, params, [0, 0, 0])
    assert tokens[:2] == logits[:2].argmax(-1).tolist()
    assert tokens[2] == Sampler()(logits[2:], params[2:], [0])[0]
