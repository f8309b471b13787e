"""Gemma 3 with images over HTTP: `pitstop engine serve` on a tiny Gemma 3 with the openai SDK; the chat's image
widened in its text as Gemma3Processor does (begin-of-image, 16 image tokens, end-of-image, the newlines around
merged by the tokenizer), answers equal to transformers', /tokenize counting the same tokens without fetching,
the same picture by URL a prefix-cache hit, and the image tokens typed in the text a 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoProcessor

from engine.chat_images import template_messages
from engine.config import ImageLimits
from engine.image_inputs import image_runs
from engine.openai_images import image_processor
from engine.tiny_gemma3_vision import BOI, EOI, IMAGE
from engine.tokenizer import Tokenizer
from tests.engine.file_server import static_files
from tests.engine.gemma3_vision_inputs import picture, transformers_answer, vision_config
from tests.engine.llava_inputs import data_url, png_bytes
from tests.engine.serving import engine_server, sdk

PNG = png_bytes(picture(1))


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    with static_files({"/blocks.png": PNG}) as url:
        yield url


@pytest.fixture(scope="module")
def served(tiny_gemma3_vision_dir: Path) -> Iterator[str]:
    with engine_server(tiny_gemma3_vision_dir, image_limits=ImageLimits(max_images=2)) as url:
        yield url


def messages(*images: str, text: str = "What is in this picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         *({"type": "image_url", "image_url": {"url": u}} for u in images)]}]


def ask(url: str, *images: str, text: str = "What is in this picture?", **extra: object) -> dict:
    return sdk(url).chat.completions.create(model="tiny", messages=messages(*images, text=text), max_tokens=6,
                                            temperature=0, extra_body={"return_token_ids": True, **extra}
                                            ).model_dump()


def test_an_image_answers_as_transformers_and_tokenize_counts_it(served: str, tiny_gemma3_vision_dir: Path) -> None:
    answer = ask(served, data_url(picture(1)), ignore_eos=True)
    prompt = answer["prompt_token_ids"]
    vision = vision_config(tiny_gemma3_vision_dir)
    pixels = list(image_processor(tiny_gemma3_vision_dir)(images=[picture(1)], return_tensors="pt")["pixel_values"])
    images = image_runs(prompt, vision.image_token_id, 16, [0], pixels)
    assert images is not None  # one run of 16 image tokens, between begin and end of image
    assert prompt[images[0].offset - 1] == vision.boi_token_id and prompt[images[0].end] == vision.eoi_token_id
    assert answer["choices"][0]["token_ids"] == transformers_answer(tiny_gemma3_vision_dir, prompt, images, 6)[0]
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    # The ids Gemma3Processor gives the rendered chat and the picture (it widens the image in the text).
    rendered = Tokenizer(tiny_gemma3_vision_dir).apply_chat_template(template_messages(messages("x")))
    processor = AutoProcessor.from_pretrained(tiny_gemma3_vision_dir, local_files_only=True)
    assert processor(text=[rendered], images=[[picture(1)]])["input_ids"][0] == prompt
    counted = httpx.post(f"{served}/tokenize", json={"model": "tiny", "messages": messages(data_url(picture(1)))})
    assert counted.json()["tokens"] == prompt


def test_a_url_image_is_fetched_and_the_same_picture_is_a_cache_hit(served: str, files: str) -> None:
    text = "Describe this picture in a few words, one after the other, please, and then stop: "
    inline = ask(served, data_url(picture(1)), text=text)
    fetched = ask(served, f"{files}/blocks.png", text=text)
    assert fetched["choices"][0]["message"]["content"] == inline["choices"][0]["message"]["content"]
    assert fetched["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    other = ask(served, data_url(picture(2)), text=text)
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] < fetched["usage"]["prompt_tokens_details"][
        "cached_tokens"]


def test_two_images_and_text_only_chats(served: str, tiny_gemma3_vision_dir: Path) -> None:
    two = ask(served, data_url(picture(1)), data_url(picture(2)), ignore_eos=True)
    prompt = two["prompt_token_ids"]
    pixels = list(image_processor(tiny_gemma3_vision_dir)(images=[picture(1), picture(2)],
                                                          return_tensors="pt")["pixel_values"])
    images = image_runs(prompt, vision_config(tiny_gemma3_vision_dir).image_token_id, 16, [0, 1], pixels)
    assert images is not None and two["usage"]["prompt_tokens"] == len(prompt)
    assert two["choices"][0]["token_ids"] == transformers_answer(tiny_gemma3_vision_dir, prompt, images, 6)[0]
    text_only = ask(served)
    assert text_only["usage"]["prompt_tokens"] < len(prompt) - 32 and text_only["choices"][0]["message"]["content"]


@pytest.mark.parametrize("typed", [BOI, IMAGE, EOI + BOI])
def test_image_tokens_typed_in_the_text_are_400s(served: str, typed: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        ask(served, data_url(picture(1)), text=f"look {typed} here")
    assert error.value.code == "invalid_value" and error.value.param == "messages"
