"""Qwen2.5-VL with images over HTTP: `pitstop engine serve` on a tiny Qwen2.5-VL with the openai SDK; each image's
`<|image_pad|>` widened to its own grid's tokens (dynamic resolution), answers equal to transformers' (M-RoPE
positions), /tokenize and usage counting the same tokens, the same picture by URL a prefix-cache hit, and the
image token typed in the text a 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from engine.config import ImageLimits
from engine.image_inputs import ImageInput, content_hash, expand_image_tokens
from engine.openai_images import image_processor
from engine.tiny_qwen2_5_vl import IMAGE_PAD
from tests.engine.file_server import static_files
from tests.engine.gemma3_vision_inputs import vision_config
from tests.engine.llava_inputs import data_url, png_bytes
from tests.engine.qwen2_5_vl_inputs import picture, transformers_answer
from tests.engine.serving import engine_server, sdk

PNG = png_bytes(picture(1))
TEXT = "Describe this picture in a few words, one after the other, please, and then stop: "


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    with static_files({"/blocks.png": PNG}) as url:
        yield url


@pytest.fixture(scope="module")
def served(tiny_qwen2_5_vl_dir: Path) -> Iterator[str]:
    with engine_server(tiny_qwen2_5_vl_dir, image_limits=ImageLimits(max_images=2)) as url:
        yield url


def messages(*images: str, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         *({"type": "image_url", "image_url": {"url": u}} for u in images),
                                         {"type": "text", "text": " Answer briefly."}]}]


def ask(url: str, *images: str, text: str = "What is in this picture?", **extra: object) -> dict:
    return sdk(url).chat.completions.create(model="tiny", messages=messages(*images, text=text), max_tokens=6,
                                            temperature=0, extra_body={"return_token_ids": True, **extra}
                                            ).model_dump()


def images_of(model_dir: Path, prompt: list[int], pictures: list[Image.Image]) -> list[ImageInput]:
    """The served prompt's images, found as the engine widened them (one run of pad tokens a picture)."""
    vision = vision_config(model_dir)
    processed = image_processor(model_dir)(images=pictures, return_tensors="pt")
    grids = [tuple(int(n) for n in grid) for grid in processed["image_grid_thw"]]
    counts = [t * h * w // 4 for t, h, w in grids]
    narrow = [t for i, t in enumerate(prompt) if t != vision.image_token_id or prompt[i - 1] != vision.image_token_id]
    pixels = list(processed["pixel_values"].split([t * h * w for t, h, w in grids]))
    hashes = [content_hash(p.mode, p.size, p.tobytes()) for p in pictures]
    ids, images = expand_image_tokens(narrow, vision.image_token_id, counts, hashes, pixels, grids)  # type: ignore[arg-type]
    assert ids == prompt
    return images


def test_an_image_answers_as_transformers_and_tokenize_counts_it(served: str, tiny_qwen2_5_vl_dir: Path) -> None:
    answer = ask(served, data_url(picture(1)), ignore_eos=True)
    prompt = answer["prompt_token_ids"]
    images = images_of(tiny_qwen2_5_vl_dir, prompt, [picture(1)])
    assert images[0].length == 12
    assert answer["choices"][0]["token_ids"] == transformers_answer(tiny_qwen2_5_vl_dir, prompt, images, 6)[0]
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    counted = httpx.post(f"{served}/tokenize", json={"model": "tiny", "messages": messages(data_url(picture(1)))})
    assert counted.json()["tokens"] == prompt


def test_two_sizes_and_a_text_only_chat(served: str, tiny_qwen2_5_vl_dir: Path) -> None:
    pictures = [picture(1), picture(2, (48, 40))]
    two = ask(served, *(data_url(p) for p in pictures), ignore_eos=True)
    prompt = two["prompt_token_ids"]
    images = images_of(tiny_qwen2_5_vl_dir, prompt, pictures)
    assert [image.length for image in images] == [12, 30] and two["usage"]["prompt_tokens"] == len(prompt)
    assert two["choices"][0]["token_ids"] == transformers_answer(tiny_qwen2_5_vl_dir, prompt, images, 6)[0]
    text_only = ask(served)
    assert text_only["usage"]["prompt_tokens"] < len(prompt) - 42 and text_only["choices"][0]["message"]["content"]


def test_a_url_image_is_fetched_and_the_same_picture_is_a_cache_hit(served: str, files: str) -> None:
    inline = ask(served, data_url(picture(1)), text=TEXT)
    fetched = ask(served, f"{files}/blocks.png", text=TEXT)
    assert fetched["choices"][0]["message"]["content"] == inline["choices"][0]["message"]["content"]
    assert fetched["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    other = ask(served, data_url(picture(2)), text=TEXT)
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] < fetched["usage"]["prompt_tokens_details"][
        "cached_tokens"]


def test_the_image_token_typed_in_the_text_and_too_many_images_are_400s(served: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        ask(served, data_url(picture(1)), text=f"look {IMAGE_PAD} here")
    assert error.value.code == "invalid_value" and error.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as error:
        ask(served, *(data_url(picture(seed)) for seed in range(3)))
    assert error.value.code == "too_many_images"
