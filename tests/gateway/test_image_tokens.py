"""Each deployment's image token rule (gateway/image_tokens.py) against the providers' documented examples, litellm's
own estimates for the same data URLs, and the engine's processors for the same pictures; which rule a deployment
gets from its model string, its model_info and its checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from starlette.datastructures import Headers

from engine.model.vision import VisionConfig
from engine.openai_images import image_processor
from engine.tiny_gemma3_vision import make_tiny_gemma3_vision
from engine.tiny_llava import make_tiny_llava
from engine.tiny_model import make_tiny_model
from engine.tiny_qwen2_5_vl import make_tiny_qwen2_5_vl
from gateway.deployments import Deployment
from gateway.image_size import ImagePart, data_url_size
from gateway.image_tokens import (
    DEFAULT_IMAGE_TOKENS,
    AnthropicPatches,
    FixedTokens,
    GeminiLevels,
    GeminiTiles,
    OpenAIPatches,
    OpenAITiles,
    QwenTokens,
    engine_image_tokens,
    image_tokens_for,
    provider_image_tokens,
)
from gateway.model_list_config import ModelInfo
from gateway.outcomes import OutcomeDraft
from gateway.request_body import parse_proxy_request
from tests.engine.qwen2_5_vl_inputs import picture
from tests.gateway.image_data import TALL, as_url, encoded


def high(width: int, height: int) -> ImagePart:
    return ImagePart((width, height), "high")


def test_openai_tile_models_count_as_openais_examples() -> None:
    gpt_4o = provider_image_tokens("openai/gpt-4o")
    assert gpt_4o.tokens(high(1024, 1024)) == 765  # 4 tiles: 85 + 4 x 170
    assert gpt_4o.tokens(high(2048, 4096)) == 1105  # 768 x 1536 after fitting: 6 tiles
    assert gpt_4o.tokens(ImagePart((2048, 4096), "low")) == 85
    assert gpt_4o.tokens(ImagePart((2048, 4096), "auto")) == 1105  # auto reads as high
    assert gpt_4o.tokens(high(128, 64)) == 255  # never enlarged: one tile
    assert gpt_4o.tokens(ImagePart(None, "high")) == 765  # unsized: a 1024 x 1024
    mini = provider_image_tokens("azure/gpt-4o-mini-2024-07-18")
    assert mini.tokens(high(1024, 1024)) == 2833 + 4 * 5667 and mini.tokens(ImagePart(None, "low")) == 2833


def test_openai_patch_models_count_32_pixel_patches_within_1536_times_their_multiplier() -> None:
    assert OpenAIPatches(1.0).tokens(high(1024, 1024)) == 1024  # OpenAI's examples: 32 x 32 patches
    assert OpenAIPatches(1.0).tokens(high(1800, 2400)) == 1452  # shrunk to 1056 x 1408: 33 x 44 patches
    mini = provider_image_tokens("openai/gpt-4.1-mini")
    assert mini.tokens(high(1800, 2400)) == math.ceil(1452 * 1.62) == mini.tokens(ImagePart((1800, 2400), "low"))
    assert provider_image_tokens("gpt-4.1-nano").tokens(high(1024, 1024)) == math.ceil(1024 * 2.46)
    assert provider_image_tokens("openai/o4-mini").tokens(high(4000, 4000)) == math.ceil(1521 * 1.72)  # 39 x 39


def test_anthropic_counts_28_pixel_patches_within_its_limits() -> None:
    claude = provider_image_tokens("anthropic/claude-sonnet-4-5")
    assert claude.tokens(high(1092, 1092)) == 39 * 39  # the largest square within 1568 patches, unshrunk
    assert claude.tokens(high(200, 200)) == 8 * 8
    big = claude.tokens(high(4000, 3000))  # shrunk, aspect kept, to at most 1568 patches
    assert 1450 < big <= 1568
    late = provider_image_tokens("anthropic/claude-opus-4-7")
    assert late.tokens(high(4000, 3000)) > 4000 and late.tokens(high(1092, 1092)) == 39 * 39
    assert provider_image_tokens("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0") == AnthropicPatches()


def test_gemini_counts_258_a_768_pixel_tile() -> None:
    gemini = provider_image_tokens("gemini/gemini-2.0-flash")
    assert gemini.tokens(high(384, 300)) == 258
    assert gemini.tokens(high(1024, 1024)) == 4 * 258 and gemini.tokens(high(3000, 700)) == 4 * 258
    assert provider_image_tokens("vertex_ai/gemini-2.5-pro") == GeminiTiles()


def test_gemini_3_counts_its_media_resolution_whatever_the_size() -> None:
    """Gemini 3's levels as litellm passes a part's `detail` (low, medium, high, ultra_high); unset: high."""
    for model in ("gemini/gemini-3-pro-preview", "vertex_ai/gemini-3.1-flash", "openrouter/google/gemini-3-flash"):
        gemini = provider_image_tokens(model)
        assert gemini == GeminiLevels()
        for size in ((64, 64), (1024, 1024), (5000, 700), None):
            counts = [gemini.tokens(ImagePart(size, detail)) for detail in ("low", "medium", "high", "ultra_high")]
            assert counts == [280, 560, 1120, 2240]
            assert gemini.tokens(ImagePart(size, "auto")) == 1120
    assert provider_image_tokens("gemini/gemini-1.5-pro") == GeminiTiles()


def test_which_rule_a_deployment_gets() -> None:
    assert provider_image_tokens("openai/gpt-4o-2024-08-06") == OpenAITiles()
    assert provider_image_tokens("azure/my-deployment") == OpenAITiles()  # Azure names its own deployments
    assert provider_image_tokens("openrouter/openai/o3") == OpenAITiles(75, 150)
    assert provider_image_tokens("openai/gpt-5-mini") == OpenAITiles(70, 140)
    assert provider_image_tokens("hosted_vllm/Qwen/Qwen2.5-VL-7B-Instruct") == FixedTokens(DEFAULT_IMAGE_TOKENS)
    assert provider_image_tokens("pitstop-engine/llava") == FixedTokens(DEFAULT_IMAGE_TOKENS)
    assert image_tokens_for("openai/gpt-4o", 1000, None) == FixedTokens(1000)  # model_info's wins
    assert image_tokens_for("pitstop-engine/qwen", 320, None) == FixedTokens(320)


SIZES = [(64, 64), (512, 512), (1024, 1024), (1092, 1092), (1800, 2400), (2048, 4096), (4000, 3000), (5000, 700),
         (700, 5000), (1568, 784), (3000, 3000)]


def test_openai_and_anthropic_agree_with_litellms_estimates_for_the_same_data_urls() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.litellm_core_utils.token_counter import estimate_image_tokens

    for model in ("openai/gpt-4o", "openai/gpt-4o-mini", "openai/o3", "anthropic/claude-sonnet-4-5",
                  "anthropic/claude-opus-4-7"):
        for size in SIZES:
            url = as_url(encoded(size, "PNG"))
            for detail in ("low", "high", "auto"):
                ours = provider_image_tokens(model).tokens(ImagePart(data_url_size(url), detail))
                assert ours == estimate_image_tokens(model, url, detail), (model, size, detail)


def test_qwen2_5_vl_counts_what_its_processor_gives_for_the_same_picture(tmp_path: Path) -> None:
    model_dir = make_tiny_qwen2_5_vl(tmp_path / "qwen", max_pixels=48 * 48)
    rule = engine_image_tokens(model_dir)
    assert isinstance(rule, QwenTokens)
    sizes = [(32, 24), (24, 32), (8, 8), (3, 5), (41, 17), (64, 64), (200, 90), (90, 200), (13, 120), (48, 48)]
    pictures = [picture(i, size) for i, size in enumerate(sizes)]
    grids = image_processor(model_dir)(images=pictures, return_tensors="pt")["image_grid_thw"].tolist()
    expected = [t * h * w // 4 for t, h, w in grids]
    assert [rule.tokens(high(*size)) for size in sizes] == expected
    assert len(set(expected)) > 4  # the sizes reach both bounds and between


def test_llava_and_gemma3_count_their_checkpoints_fixed_tokens(tmp_path: Path) -> None:
    assert engine_image_tokens(make_tiny_llava(tmp_path / "llava", image_size=56)) == FixedTokens(16)  # (56 / 14)^2
    gemma = make_tiny_gemma3_vision(tmp_path / "gemma")
    expected = VisionConfig.from_dict(json.loads((gemma / "config.json").read_text())).tokens_per_image
    assert engine_image_tokens(gemma) == FixedTokens(expected)
    assert engine_image_tokens(make_tiny_model(tmp_path / "text")) == FixedTokens(DEFAULT_IMAGE_TOKENS)



def test_a_cut_calls_estimated_usage_counts_its_images_as_its_deployment_does() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": TALL}}]}]}
    request = parse_proxy_request(body, "chat", Headers())
    deployment = Deployment("m#0", "m", None, ModelInfo(), "openai/gpt-4o",  # type: ignore[arg-type]
                            image_tokens=provider_image_tokens("openai/gpt-4o"))
    draft = OutcomeDraft(request=request, deployment=deployment)  # no usage came back: estimated
    assert draft.usage_estimated and draft.tokens[0] == math.ceil((10 + 4 * 1105) / 4)
