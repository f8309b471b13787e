"""Qwen3-VL and Qwen3-VL-MoE with images on the engine, against transformers' Qwen3VL(Moe)ForConditionalGeneration on
tiny random checkpoints (engine/tiny_qwen3_vl.py): the interleaved M-RoPE's rows and the prompt's positions equal
transformers' own; greedy answers token for token (and the prompt's logprobs close) for the dense and the MoE
model, with DeepStack's features added after the first layers at the image tokens: two picture sizes in one prompt
beside a text-only request, prefill chunks cutting the image, a prefix-cache hit through the image, two
tensor-parallel ranks; a draft model refused; the releases' configs and transposed experts read as transformers
reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.build import build_engine
from engine.config import SpeculativeConfig
from engine.image_inputs import ImageInput
from engine.model.config import ModelConfig
from engine.model.qwen3_vl import checkpoint_tensor
from engine.model.rope import RotaryEmbedding
from engine.rope_positions import mrope_prompt_positions
from engine.sampling_params import SamplingParams
from engine.tiny_qwen3_vl import make_tiny_qwen3_vl
from tests.engine.llava_inputs import run
from tests.engine.qwen2_5_vl_inputs import picture, qwen_engine, qwen_prompt
from tests.engine.test_gemma3_vision_engine import prompt_logprobs, reference_logprobs
from tests.engine.test_vision_tensor_parallel import _answers

BEFORE = "Look at this picture, carefully, please:"
AFTER = " and now tell me, in a few words, what it shows?"


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl_moe"), moe=True)


_MODELS: dict[Path, torch.nn.Module] = {}


def reference(model_dir: Path) -> torch.nn.Module:
    if model_dir not in _MODELS:
        import transformers as hf

        moe = ModelConfig.from_dir(model_dir).num_experts > 0
        kind = hf.Qwen3VLMoeForConditionalGeneration if moe else hf.Qwen3VLForConditionalGeneration
        _MODELS[model_dir] = kind.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _MODELS[model_dir]


def transformers_answer(model_dir: Path, ids: list[int], images: list[ImageInput], max_new_tokens: int = 8
                        ) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy answer and its prompt's logits [T, vocab]."""
    model = reference(model_dir)
    input_ids = torch.tensor([ids])
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if images:
        inputs["pixel_values"] = torch.cat([image.pixel_values for image in images])
        inputs["image_grid_thw"] = torch.tensor([image.grid_thw for image in images])
        inputs["mm_token_type_ids"] = (input_ids == model.config.image_token_id).int()
    with torch.no_grad():
        logits = model(**inputs).logits[0]
        model.model.rope_deltas = None  # the forward above left its own
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist(), logits


def test_interleaved_rotary_is_transformers(dense_dir: Path) -> None:
    """cos/sin of 3-row positions that differ by row: each frequency reads the row transformers' does."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    config = ModelConfig.from_dir(dense_dir)
    assert config.mrope_interleaved and config.mrope_section == (4, 2, 2)
    positions = torch.stack([torch.arange(9), torch.arange(9) * 3 % 7, torch.arange(9) * 5 % 11])
    expected_cos, expected_sin = Qwen3VLTextRotaryEmbedding(reference(dense_dir).config.text_config)(
        torch.zeros(1), positions[:, None])
    rope = RotaryEmbedding(config, torch.device("cpu"), torch.float32)
    q = torch.randn(9, 1, config.head_dim)
    turned, _ = rope(positions, q, q)
    cos, sin = expected_cos[0, :, None], expected_sin[0, :, None]
    rotated = torch.cat([-q[..., config.head_dim // 2:], q[..., : config.head_dim // 2]], dim=-1)
    torch.testing.assert_close(turned, q * cos + rotated * sin)


def test_positions_are_transformers_get_rope_index(dense_dir: Path) -> None:
    ids, images = qwen_prompt(dense_dir, BEFORE, [picture(1), picture(2, (40, 16))], AFTER)
    table, delta = mrope_prompt_positions(len(ids), images, 2)
    model = reference(dense_dir)
    input_ids = torch.tensor([ids])
    expected, deltas = model.model.get_rope_index(
        input_ids, (input_ids == model.config.image_token_id).int(),
        image_grid_thw=torch.tensor([image.grid_thw for image in images]))
    assert torch.equal(table, expected[:, 0]) and delta == int(deltas) < 0


@pytest.mark.parametrize("family", ["dense_dir", "moe_dir"])
def test_greedy_answer_and_prompt_logits_equal_transformers(family: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(family)
    ids, images = qwen_prompt(model_dir, BEFORE, [picture(1)], AFTER)
    assert images[0].length == 12 and images[0].grid_thw == (1, 6, 8)
    scored = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
    engine = qwen_engine(model_dir)
    out = run(engine, {"a": (ids, images)}, scored)["a"]
    expected, logits = transformers_answer(model_dir, ids, images, 12)
    assert out.new_token_ids == expected
    assert out.num_prompt_tokens == len(ids)
    torch.testing.assert_close(prompt_logprobs(out), reference_logprobs(ids, logits), atol=2e-4, rtol=1e-4)
    # the image changes the answer
    other = qwen_prompt(model_dir, BEFORE, [picture(2)], AFTER)
    assert run(engine, {"b": other}, scored)["b"].new_token_ids != expected


def test_two_sizes_in_one_prompt_beside_image_and_text_requests(dense_dir: Path) -> None:
    requests = {"image": qwen_prompt(dense_dir, BEFORE, [picture(3, (48, 40))], AFTER),
                "text": qwen_prompt(dense_dir, "No picture here, only words to answer.", []),
                "two": qwen_prompt(dense_dir, "Compare", [picture(4), picture(5, (40, 16))], AFTER)}
    assert [image.length for image in requests["two"][1]] == [12, 10]
    outs = run(qwen_engine(dense_dir), requests)
    for name, (ids, images) in requests.items():
        assert outs[name].new_token_ids == transformers_answer(dense_dir, ids, images)[0], name


@pytest.mark.parametrize("chunk", [7, 24])
def test_prefill_chunks_cutting_the_image_answer_as_unchunked(dense_dir: Path, chunk: int) -> None:
    ids, images = qwen_prompt(dense_dir, BEFORE, [picture(1)], AFTER)
    image = images[0]
    assert any(image.offset < k < image.end for k in range(chunk, len(ids), chunk))  # a chunk ends inside it
    engine = qwen_engine(dense_dir, chunk=chunk)
    out = run(engine, {"a": (ids, images)})["a"]
    assert out.new_token_ids == transformers_answer(dense_dir, ids, images)[0]
    assert engine.runner.image_features.images_encoded == 1  # type: ignore[attr-defined]


def test_a_prefix_cache_hit_through_the_image(moe_dir: Path) -> None:
    """The same picture again: the blocks through it (their K/V computed with DeepStack's additions) are hits,
    the encoder not run again, the answer the same; another picture behind the same tokens: only the blocks
    before it."""
    engine = qwen_engine(moe_dir)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=5)
    first = qwen_prompt(moe_dir, BEFORE, [picture(1)], AFTER)
    other = qwen_prompt(moe_dir, BEFORE, [picture(2)], AFTER)
    image = first[1][0]
    full_blocks = (len(first[0]) - 1) // 16
    assert full_blocks * 16 > image.end
    a = run(engine, {"a": first}, params)["a"]
    again = run(engine, {"again": first}, params)["again"]
    assert engine.runner.image_features.images_encoded == 1  # type: ignore[attr-defined]
    b = run(engine, {"b": other}, params)["b"]
    assert (a.num_cached_tokens, again.num_cached_tokens, b.num_cached_tokens) == (0, full_blocks * 16,
                                                                                   image.offset // 16 * 16)
    assert again.new_token_ids == a.new_token_ids == transformers_answer(moe_dir, *first)[0]
    torch.testing.assert_close(torch.tensor([lp.top_logprobs for lp in again.logprobs]),
                               torch.tensor([lp.top_logprobs for lp in a.logprobs]), atol=1e-5, rtol=0)
    assert b.new_token_ids == transformers_answer(moe_dir, *other)[0]


def test_two_tensor_parallel_ranks_answer_as_one(dense_dir: Path) -> None:
    """Rank 0 encodes; every rank adds the DeepStack features it receives with the step."""
    requests = {"image": qwen_prompt(dense_dir, BEFORE, [picture(1)], AFTER),
                "text": qwen_prompt(dense_dir, "No picture here, only words to answer.", [])}
    one, _ = _answers(dense_dir, requests, tp=1, chunk=16)
    two, encoded = _answers(dense_dir, requests, tp=2, chunk=16)
    assert encoded == 1
    for name in requests:
        assert two[name].new_token_ids == one[name].new_token_ids, name
    assert one["image"].new_token_ids == transformers_answer(dense_dir, *requests["image"], 6)[0]


def test_a_draft_model_is_refused(dense_dir: Path) -> None:
    with pytest.raises(ValueError, match="M-RoPE"):
        build_engine(model_dir=dense_dir, num_blocks=16, device="cpu",
                     speculative=SpeculativeConfig(method="draft_model", model=str(dense_dir)))


def test_the_releases_configs_and_stored_experts_read_as_transformers() -> None:
    """Qwen3-VL-8B-Instruct's and Qwen3-VL-30B-A3B-Instruct's config.json (abridged to what the parse reads), and the
    MoE releases' experts stored [experts, in, out]."""
    vision = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "out_hidden_size": 4096,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
              "deepstack_visual_indexes": [8, 16, 24], "model_type": "qwen3_vl"}
    rope = {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default", "rope_theta": 5e6}
    text = {"hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32, "num_hidden_layers": 36,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 262144,
            "rope_scaling": rope, "model_type": "qwen3_vl_text", "tie_word_embeddings": False}
    dense = ModelConfig.from_dict({"model_type": "qwen3_vl", "text_config": text, "vision_config": vision,
                                   "image_token_id": 151655, "tie_word_embeddings": False})
    assert (dense.model_type, dense.mrope_section, dense.mrope_interleaved, dense.rope_theta, dense.qk_norm,
            dense.qkv_bias, dense.tie_word_embeddings) == ("qwen3", (24, 20, 20), True, 5e6, True, False, False)
    moe_text = {**text, "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
                "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "decoder_sparse_step": 1,
                "model_type": "qwen3_vl_moe_text", "tie_word_embeddings": True}
    moe = ModelConfig.from_dict({"model_type": "qwen3_vl_moe", "text_config": moe_text, "vision_config": vision,
                                 "tie_word_embeddings": False})
    assert (moe.model_type, moe.num_experts, moe.num_experts_per_tok, moe.norm_topk_prob, len(moe.sparse_layers),
            moe.tie_word_embeddings) == ("qwen3_moe", 128, 8, True, 48, False)
    stored = torch.randn(4, 2048, 2 * 768)  # the release's [experts, hidden, 2 * intermediate]
    name = "model.language_model.layers.0.mlp.experts."
    assert torch.equal(checkpoint_tensor(name + "gate_up_proj", stored, 2048), stored.transpose(1, 2))
    down = torch.randn(4, 768, 2048)
    assert torch.equal(checkpoint_tensor(name + "down_proj", down, 2048), down.transpose(1, 2))
    ours = down.transpose(1, 2)  # transformers' save_pretrained writes the model's own layout: kept
    assert checkpoint_tensor(name + "down_proj", ours, 2048) is ours


def test_pitstop_engine_quantize_keeps_the_tower_and_serves_images_as_the_flag(moe_dir: Path, tmp_path: Path) -> None:
    """int8 of the MoE: the language model's attention projections quantized (experts stay in the model's dtype),
    the vision model's tensors copied as they are and named in `ignore`; the folder answers as `--quantization`."""
    import json

    from gateway.cli import main
    from tests.engine.test_vision_quantization import _prompt_logprobs, _served, _vision_tensors
    from tests.engine.vision_families import qwen_requests

    out = tmp_path / "int8"
    assert main(["engine", "quantize", "--model", str(moe_dir), "--out", str(out), "--quantization", "int8"]) == 0
    source, written = _vision_tensors(moe_dir), _vision_tensors(out)
    assert source and written.keys() == source.keys()
    assert all(torch.equal(written[name], tensor) for name, tensor in source.items())
    assert "re:.*visual.*" in json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    requests = qwen_requests(moe_dir)
    served, runner = _served(out, requests)
    flagged, _ = _served(moe_dir, requests, "int8")
    assert runner.quantization == "int8" and runner.image_features is not None
    for name in requests:
        assert served[name].new_token_ids == flagged[name].new_token_ids, name
        assert torch.equal(_prompt_logprobs(served[name]), _prompt_logprobs(flagged[name])), name


def test_prompt_embeddings_beside_an_image_in_one_step(dense_dir: Path) -> None:
    """A prompt sent as its input embeddings shares the step with an image's rows (wider: DeepStack's after them)
    and answers as its ids do."""
    from engine.config import EngineConfig
    from engine.llm_engine import LLMEngine
    from engine.torch_runner import TorchModelRunner

    image = qwen_prompt(dense_dir, BEFORE, [picture(1)], AFTER)
    ids = qwen_prompt(dense_dir, "No picture here, only words to answer.", [])[0]
    runner = TorchModelRunner(dense_dir, 64, 16, device="cpu")
    engine = LLMEngine(EngineConfig(num_blocks=64, max_model_len=512, enable_prompt_embeds=True), runner)
    with torch.no_grad():
        embeds = runner.model.model.embed_tokens(torch.tensor(ids))
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    engine.add_request("image", image[0], greedy, images=image[1])
    engine.add_request("embeds", [0] * len(ids), greedy, prompt_embeds=embeds)
    outs: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outs.setdefault(out.request_id, []).extend(out.new_token_ids)
    assert outs["image"] == transformers_answer(dense_dir, *image, 6)[0]
    assert outs["embeds"] == transformers_answer(dense_dir, ids, [], 6)[0]
