"""A LLaVA checkpoint on the engine: greedy answers token for token transformers' LlavaForConditionalGeneration
(and the prompt's logits close), alone, in a batch beside a text-only request, with the image cut across
prefill chunks, in both checkpoint key layouts and with SigLIP; the prefix cache keyed by the image's content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.image_inputs import block_image_keys
from engine.sampling_params import SamplingParams
from engine.tiny_llava import make_tiny_llava
from tests.engine.llava_inputs import GREEDY, image_prompt, llava_engine, picture, run, transformers_answer

BEFORE = "Look at this picture, carefully, please: "  # 18 tokens: the image (18-33) spans blocks 1 and 2


def test_greedy_answer_and_prompt_logits_equal_transformers(tiny_llava_dir: Path) -> None:
    ids, images = image_prompt(tiny_llava_dir, BEFORE, [picture(1)])
    assert ids.count(ids[images[0].offset]) == images[0].length == 16
    scored = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
    out = run(llava_engine(tiny_llava_dir), {"a": (ids, images)}, scored)["a"]
    expected, logits = transformers_answer(tiny_llava_dir, ids, images)
    assert out.new_token_ids == expected
    assert out.num_prompt_tokens == len(ids)  # usage counts the image's 16 tokens
    reference = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    assert out.prompt_logprobs is not None
    ours = torch.tensor([lp.logprob for lp in out.prompt_logprobs])
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=1e-4)


def test_the_image_changes_the_answer(tiny_llava_dir: Path) -> None:
    """Two pictures behind the same tokens: transformers answers them differently, and so does the engine."""
    first, second = (image_prompt(tiny_llava_dir, BEFORE, [picture(seed)]) for seed in (1, 2))
    assert first[0] == second[0]
    outs = run(llava_engine(tiny_llava_dir, enable_prefix_caching=False), {"a": first, "b": second})
    assert outs["a"].new_token_ids != outs["b"].new_token_ids
    assert outs["b"].new_token_ids == transformers_answer(tiny_llava_dir, *second)[0]


def test_a_batch_of_image_and_text_requests_and_two_images_in_one_prompt(tiny_llava_dir: Path) -> None:
    requests = {"image": image_prompt(tiny_llava_dir, BEFORE, [picture(3)]),
                "text": image_prompt(tiny_llava_dir, "No picture here, only words to answer. ", []),
                "two": image_prompt(tiny_llava_dir, "Compare ", [picture(4), picture(5)], " and tell.")}
    outs = run(llava_engine(tiny_llava_dir), requests)
    for name, (ids, images) in requests.items():
        assert outs[name].new_token_ids == transformers_answer(tiny_llava_dir, ids, images)[0], name


@pytest.mark.parametrize("chunk", [7, 24])
def test_an_image_cut_across_prefill_chunks_is_encoded_once(tiny_llava_dir: Path, chunk: int) -> None:
    """Chunks of 7 cut the image (positions 18-33) three ways; 24 in two: the unchunked answer either way."""
    ids, images = image_prompt(tiny_llava_dir, BEFORE, [picture(1)])
    engine = llava_engine(tiny_llava_dir, chunk=chunk, max_num_batched_tokens=64)
    out = run(engine, {"a": (ids, images)})["a"]
    assert out.new_token_ids == run(llava_engine(tiny_llava_dir), {"a": (ids, images)})["a"].new_token_ids
    features = engine.runner.image_features  # type: ignore[attr-defined]
    assert features.images_encoded == 1 and not any(features.features.values())  # freed once its prefill ended


def test_the_prefix_cache_keys_blocks_by_the_image(tiny_llava_dir: Path) -> None:
    """The same picture again: its blocks are hits and the encoder does not run; another picture behind the
    same tokens: only the block before it is a hit, and its own answer (and logprobs) comes back."""
    engine = llava_engine(tiny_llava_dir)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=5)
    first = image_prompt(tiny_llava_dir, BEFORE, [picture(1)], " what is it? Say it in words, one by one.")
    other = image_prompt(tiny_llava_dir, BEFORE, [picture(2)], " what is it? Say it in words, one by one.")
    assert len(first[0]) > 48 and first[1][0].end <= 48  # the image inside the three full blocks
    a = run(engine, {"a": first}, params)["a"]
    again = run(engine, {"again": first}, params)["again"]
    encoded = engine.runner.image_features.images_encoded  # type: ignore[attr-defined]
    b = run(engine, {"b": other}, params)["b"]
    assert (a.num_cached_tokens, again.num_cached_tokens, b.num_cached_tokens) == (0, 48, 16)
    assert again.new_token_ids == a.new_token_ids and again.logprobs == a.logprobs
    assert encoded == 1 and engine.runner.image_features.images_encoded == 2  # type: ignore[attr-defined]
    assert b.new_token_ids == transformers_answer(tiny_llava_dir, *other)[0]
    assert a.logprobs and b.logprobs
    assert abs(a.logprobs[0].top_logprobs[0] - b.logprobs[0].top_logprobs[0]) > 1e-3  # the image is seen


def test_the_host_tier_holds_an_image_s_blocks_under_its_hash(tiny_llava_dir: Path) -> None:
    """Evicted to the host tier, the picture's blocks come back for the same picture, not for another one."""
    engine = llava_engine(tiny_llava_dir, num_blocks=8, num_host_blocks=16)
    after = " what is it? Say it in words, one by one."
    first, other = (image_prompt(tiny_llava_dir, BEFORE, [picture(seed)], after) for seed in (1, 2))
    filler = image_prompt(tiny_llava_dir, "Words only, to push the picture out of the cache. " * 5, [])
    a = run(engine, {"a": first})["a"]
    run(engine, {"filler": filler})
    again = run(engine, {"again": first})["again"]
    assert again.num_cached_tokens == 48 and engine.block_manager.host_hit_tokens >= 32
    assert again.new_token_ids == a.new_token_ids
    run(engine, {"filler2": filler})
    loaded = engine.block_manager.host_hit_tokens
    b = run(engine, {"b": other})["b"]
    assert b.num_cached_tokens == 16 and engine.block_manager.host_hit_tokens - loaded <= 16  # the block before it


def test_block_image_keys_name_the_images_a_block_holds() -> None:
    from engine.image_inputs import ImageInput

    images = [ImageInput(18, 16, 111, torch.zeros(1)), ImageInput(40, 4, 222, torch.zeros(1))]
    assert [block_image_keys(images, i * 16, (i + 1) * 16) for i in range(4)] == [(), (111,), (111, 222), ()]


@pytest.mark.parametrize("kind", ["legacy_layout", "siglip_full", "feature_layers"])
def test_other_layouts_and_towers_equal_transformers(tmp_path: Path, kind: str) -> None:
    """The older key layout; a SigLIP tower with every patch kept ("full"); features of two layers concatenated."""
    options: dict = {"legacy_layout": {"legacy_layout": True},
                     "siglip_full": {"tower": "siglip", "select_strategy": "full"},
                     "feature_layers": {"feature_layer": [-2, -1], "vision_layers": 3}}[kind]
    model_dir = make_tiny_llava(tmp_path, image_size=28, vocab_size=400, **options)
    assert json.loads((model_dir / "config.json").read_text())["vision_config"]["model_type"] == \
        ("siglip_vision_model" if kind == "siglip_full" else "clip_vision_model")
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        assert any(name.startswith("language_model.model.") for name in f.keys()) == (kind == "legacy_layout")  # noqa: SIM118
    ids, images = image_prompt(model_dir, "Here: ", [picture(7)])
    assert images[0].length == 4  # 2 x 2 patches: CLIP's CLS dropped, SigLIP has none
    out = run(llava_engine(model_dir), {"a": (ids, images)})["a"]
    assert out.new_token_ids == transformers_answer(model_dir, ids, images)[0]
    assert GREEDY.max_tokens == len(out.new_token_ids)
