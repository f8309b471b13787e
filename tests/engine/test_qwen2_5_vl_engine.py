"""A Qwen2.5-VL checkpoint with images on the engine: greedy answers token for token transformers'
Qwen2_5_VLForConditionalGeneration (and the prompt's logits close) through M-RoPE: image tokens at their (t, h, w)
grid positions, the text after an image continuing from the grid's largest id + 1, decoding at index +
rope_delta; dynamic resolution (two pictures of different sizes, different token counts); a text-only request
beside image ones; prefill chunks cutting an image; the prefix cache keyed by the image's content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.build import build_engine
from engine.config import SpeculativeConfig
from engine.rope_positions import mrope_prompt_positions
from engine.sampling_params import SamplingParams
from tests.engine.llava_inputs import run
from tests.engine.qwen2_5_vl_inputs import picture, qwen_engine, qwen_prompt, transformers_answer
from tests.engine.test_gemma3_vision_engine import prompt_logprobs, reference_logprobs

BEFORE = "Look at this picture, carefully, please:"
AFTER = " and now tell me, in a few words, what it shows?"


def test_positions_are_transformers_get_rope_index(tiny_qwen2_5_vl_dir: Path) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    ids, images = qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(1), picture(2, (40, 16))], AFTER)
    table, delta = mrope_prompt_positions(len(ids), images, 2)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen2_5_vl_dir)
    input_ids = torch.tensor([ids])
    expected, deltas = model.model.get_rope_index(
        input_ids, (input_ids == model.config.image_token_id).int(),
        image_grid_thw=torch.tensor([image.grid_thw for image in images]))
    assert torch.equal(table, expected[:, 0]) and delta == int(deltas) < 0


def test_greedy_answer_and_prompt_logits_equal_transformers(tiny_qwen2_5_vl_dir: Path) -> None:
    ids, images = qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(1)], AFTER)
    assert images[0].length == 12 and images[0].grid_thw == (1, 6, 8)  # 32 x 24 pixels: 8 x 6 patches, merged 2 x 2
    scored = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
    engine = qwen_engine(tiny_qwen2_5_vl_dir)
    out = run(engine, {"a": (ids, images)}, scored)["a"]
    expected, logits = transformers_answer(tiny_qwen2_5_vl_dir, ids, images, 12)
    assert out.new_token_ids == expected
    assert out.num_prompt_tokens == len(ids)  # usage counts the image's 12 tokens
    torch.testing.assert_close(prompt_logprobs(out), reference_logprobs(ids, logits), atol=2e-4, rtol=1e-4)
    assert engine.runner.image_features.images_encoded == 1  # type: ignore[attr-defined]


def test_the_image_changes_the_answer(tiny_qwen2_5_vl_dir: Path) -> None:
    first, second = (qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(seed)], AFTER) for seed in (1, 2))
    assert first[0] == second[0]
    outs = run(qwen_engine(tiny_qwen2_5_vl_dir, enable_prefix_caching=False), {"a": first, "b": second})
    assert outs["a"].new_token_ids != outs["b"].new_token_ids
    assert outs["b"].new_token_ids == transformers_answer(tiny_qwen2_5_vl_dir, *second)[0]


def test_two_sizes_in_one_prompt_beside_image_and_text_requests(tiny_qwen2_5_vl_dir: Path) -> None:
    requests = {"image": qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(3, (48, 40))], AFTER),
                "text": qwen_prompt(tiny_qwen2_5_vl_dir, "No picture here, only words to answer.", []),
                "two": qwen_prompt(tiny_qwen2_5_vl_dir, "Compare", [picture(4), picture(5, (40, 16))], AFTER)}
    assert [image.length for image in requests["two"][1]] == [12, 10]  # dynamic resolution
    outs = run(qwen_engine(tiny_qwen2_5_vl_dir), requests)
    for name, (ids, images) in requests.items():
        assert outs[name].new_token_ids == transformers_answer(tiny_qwen2_5_vl_dir, ids, images)[0], name


@pytest.mark.parametrize("chunk", [7, 24])
def test_prefill_chunks_cutting_the_image_answer_as_unchunked(tiny_qwen2_5_vl_dir: Path, chunk: int) -> None:
    ids, images = qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(1)], AFTER)
    image = images[0]
    assert any(image.offset < k < image.end for k in range(chunk, len(ids), chunk))  # a chunk ends inside it
    engine = qwen_engine(tiny_qwen2_5_vl_dir, chunk=chunk)
    out = run(engine, {"a": (ids, images)})["a"]
    assert out.new_token_ids == transformers_answer(tiny_qwen2_5_vl_dir, ids, images)[0]
    assert engine.runner.image_features.images_encoded == 1  # type: ignore[attr-defined]


def test_the_prefix_cache_keys_blocks_by_the_image(tiny_qwen2_5_vl_dir: Path) -> None:
    """The same picture again: the blocks through it are hits, the encoder not run, the answer (decoded at the
    hit's M-RoPE positions) the same; another picture behind the same tokens: only the blocks before it."""
    engine = qwen_engine(tiny_qwen2_5_vl_dir)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=5)
    first = qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(1)], AFTER)
    other = qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(2)], AFTER)
    image = first[1][0]
    full_blocks = (len(first[0]) - 1) // 16
    assert full_blocks * 16 > image.end
    a = run(engine, {"a": first}, params)["a"]
    again = run(engine, {"again": first}, params)["again"]
    assert engine.runner.image_features.images_encoded == 1  # type: ignore[attr-defined]
    b = run(engine, {"b": other}, params)["b"]
    assert (a.num_cached_tokens, again.num_cached_tokens, b.num_cached_tokens) == (0, full_blocks * 16,
                                                                                   image.offset // 16 * 16)
    assert again.new_token_ids == a.new_token_ids == transformers_answer(tiny_qwen2_5_vl_dir, *first)[0]
    torch.testing.assert_close(torch.tensor([lp.top_logprobs for lp in again.logprobs]),
                               torch.tensor([lp.top_logprobs for lp in a.logprobs]), atol=1e-5, rtol=0)
    assert b.new_token_ids == transformers_answer(tiny_qwen2_5_vl_dir, *other)[0]


def test_ngram_drafts_are_checked_at_mrope_positions_and_a_draft_model_is_refused(tiny_qwen2_5_vl_dir: Path) -> None:
    """Drafted tokens are past the prompt: verified at index + rope_delta, as decoding is, so the answer is
    transformers' token for token with drafts accepted. A draft model would need the target's 3-row positions.
    (Quantization and tensor parallelism serve images: tests/engine/test_vision_quantization.py,
    test_vision_tensor_parallel.py.)"""
    ids, images = qwen_prompt(tiny_qwen2_5_vl_dir, BEFORE, [picture(1)], AFTER)
    engine = qwen_engine(tiny_qwen2_5_vl_dir, speculative=SpeculativeConfig(
        method="ngram", num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=2))
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    out = run(engine, {"a": (ids, images)}, greedy)["a"]
    assert out.new_token_ids == transformers_answer(tiny_qwen2_5_vl_dir, ids, images, 24)[0]
    assert engine.spec.accepted_tokens > 0  # drafts checked and kept, not only proposed
    with pytest.raises(ValueError, match="M-RoPE"):
        build_engine(model_dir=tiny_qwen2_5_vl_dir, num_blocks=16, device="cpu",
                     speculative=SpeculativeConfig(method="draft_model", model=str(tiny_qwen2_5_vl_dir)))


def test_a_hub_config_reads_as_qwen2_on_mrope() -> None:
    """Qwen2.5-VL-7B-Instruct's config.json (transformers 4.x: the text keys at the top, rope_scaling "mrope")."""
    from engine.model.config import ModelConfig
    from engine.model.vision import VisionConfig

    hub = {"model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
           "num_hidden_layers": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
           "rope_theta": 1000000.0, "vocab_size": 152064, "image_token_id": 151655, "video_token_id": 151656,
           "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "torch_dtype": "bfloat16",
           "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                             "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "window_size": 112,
                             "fullatt_block_indexes": [7, 15, 23, 31], "temporal_patch_size": 2}}
    config = ModelConfig.from_dict(hub)
    assert (config.model_type, config.mrope_section, config.rope_theta, config.rope_scaling, config.head_dim,
            config.qkv_bias) == ("qwen2", (16, 24, 24), 1e6, None, 128, True)
    vision = VisionConfig.from_dict(hub)
    assert vision is not None and (vision.image_token_id, vision.merge_size, vision.dynamic_resolution) == (
        151655, 2, True)
