"""A Gemma 3 checkpoint with images on the engine: greedy answers token for token transformers'
Gemma3ForConditionalGeneration (and the prompt's logits close), its image tokens attending to each other both
ways (transformers' token-type mask) on the sliding and the full layer, the patch grid pooled and normed as its
projector does; an image never cut across prefill chunks; the prefix cache keyed by the image's content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.sampling_params import SamplingParams
from tests.engine.gemma3_vision_inputs import gemma3_engine, gemma3_prompt, picture, transformers_answer
from tests.engine.llava_inputs import run

BEFORE = "Look at this picture, carefully, please:"
LONG = ("A long preamble that runs well past the sliding layer's window of twenty-four tokens, so that the "
        "picture after it is seen through the window: ")


def prompt_logprobs(out: object) -> torch.Tensor:
    return torch.tensor([lp.logprob for lp in out.prompt_logprobs])  # type: ignore[attr-defined]


def reference_logprobs(ids: list[int], logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


@pytest.mark.parametrize("before", [BEFORE, LONG], ids=["short", "past_the_window"])
def test_greedy_answer_and_prompt_logits_equal_transformers(tiny_gemma3_vision_dir: Path, before: str) -> None:
    ids, images = gemma3_prompt(tiny_gemma3_vision_dir, before, [picture(1)])
    assert images[0].length == 16 and images[0].bidirectional
    if before == LONG:
        assert images[0].offset > 24  # the sliding layer's window does not reach back to BOS from the image
    scored = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
    out = run(gemma3_engine(tiny_gemma3_vision_dir), {"a": (ids, images)}, scored)["a"]
    expected, logits = transformers_answer(tiny_gemma3_vision_dir, ids, images)
    assert out.new_token_ids == expected
    assert out.num_prompt_tokens == len(ids)  # usage counts the image's 16 tokens, begin and end
    torch.testing.assert_close(prompt_logprobs(out), reference_logprobs(ids, logits), atol=2e-4, rtol=1e-4)
    # The tiny model tells a causal image mask apart: these logits differ far beyond the tolerance.
    causal = reference_logprobs(ids, transformers_answer(tiny_gemma3_vision_dir, ids, images, bidirectional=False)[1])
    assert (causal - reference_logprobs(ids, logits)).abs().max() > 1e-2


def test_the_image_changes_the_answer(tiny_gemma3_vision_dir: Path) -> None:
    first, second = (gemma3_prompt(tiny_gemma3_vision_dir, BEFORE, [picture(seed)]) for seed in (1, 2))
    assert first[0] == second[0]
    outs = run(gemma3_engine(tiny_gemma3_vision_dir, enable_prefix_caching=False), {"a": first, "b": second})
    assert outs["a"].new_token_ids != outs["b"].new_token_ids
    assert outs["b"].new_token_ids == transformers_answer(tiny_gemma3_vision_dir, *second)[0]


def test_a_batch_of_image_and_text_requests_and_two_images_in_one_prompt(tiny_gemma3_vision_dir: Path) -> None:
    requests = {"image": gemma3_prompt(tiny_gemma3_vision_dir, BEFORE, [picture(3)]),
                "text": gemma3_prompt(tiny_gemma3_vision_dir, "No picture here, only words to answer.", []),
                "two": gemma3_prompt(tiny_gemma3_vision_dir, "Compare", [picture(4), picture(5)], " and tell.")}
    outs = run(gemma3_engine(tiny_gemma3_vision_dir), requests)
    for name, (ids, images) in requests.items():
        assert outs[name].new_token_ids == transformers_answer(tiny_gemma3_vision_dir, ids, images)[0], name


@pytest.mark.parametrize("chunk", [16, 20, 40])
def test_a_prefill_chunk_ends_before_an_image_it_cannot_hold(tiny_gemma3_vision_dir: Path, chunk: int) -> None:
    """The image (16 tokens) would be cut by chunks of 16, 20 and 40: each chunk ends before it instead, the
    image is computed in one, and the answer is the unchunked one (transformers')."""
    ids, images = gemma3_prompt(tiny_gemma3_vision_dir, LONG, [picture(1)])
    image = images[0]
    assert any(image.offset < k < image.end for k in range(chunk, len(ids), chunk))  # plain chunks would cut it
    engine = gemma3_engine(tiny_gemma3_vision_dir, chunk=chunk)
    spans: list[tuple[int, int]] = []
    prepare = engine.runner._prepare  # type: ignore[attr-defined]

    def recording(batch):  # type: ignore[no-untyped-def]
        spans.extend((s.num_computed_tokens, s.num_computed_tokens + n) for s, n in
                     zip(batch.seqs, batch.num_new_tokens, strict=True) if s.num_computed_tokens < len(ids))
        return prepare(batch)

    engine.runner._prepare = recording  # type: ignore[attr-defined]
    out = run(engine, {"a": (ids, images)})["a"]
    assert out.new_token_ids == transformers_answer(tiny_gemma3_vision_dir, ids, images)[0]
    assert not any(start < image.offset < end < image.end or image.offset < start < image.end
                   for start, end in spans), spans
    assert any(end == image.offset for _, end in spans)  # a chunk was cut short before the image


def test_a_step_that_cannot_hold_an_image_is_refused_at_start(tiny_gemma3_vision_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        gemma3_engine(tiny_gemma3_vision_dir, chunk=15)


def test_the_prefix_cache_keys_blocks_by_the_image(tiny_gemma3_vision_dir: Path) -> None:
    """The same picture again: its blocks are hits (the last one ending inside the image, whose rest is computed
    seeing all of it) and the encoder does not run for a whole hit; another picture behind the same tokens: only
    the blocks before it are hits, and its own answer comes back."""
    engine = gemma3_engine(tiny_gemma3_vision_dir)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=5)
    first = gemma3_prompt(tiny_gemma3_vision_dir, BEFORE, [picture(1)], " what?")
    other = gemma3_prompt(tiny_gemma3_vision_dir, BEFORE, [picture(2)], " what?")
    image = first[1][0]
    full_blocks = (len(first[0]) - 1) // 16
    assert image.offset < full_blocks * 16 < image.end  # the cached prefix ends inside the image
    a = run(engine, {"a": first}, params)["a"]
    again = run(engine, {"again": first}, params)["again"]
    b = run(engine, {"b": other}, params)["b"]
    assert (a.num_cached_tokens, again.num_cached_tokens, b.num_cached_tokens) == (0, full_blocks * 16,
                                                                                   image.offset // 16 * 16)
    assert again.new_token_ids == a.new_token_ids == transformers_answer(tiny_gemma3_vision_dir, *first)[0]
    assert again.logprobs == a.logprobs
    assert b.new_token_ids == transformers_answer(tiny_gemma3_vision_dir, *other)[0]
