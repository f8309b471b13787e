"""Image inputs over HTTP: `pitstop engine serve` on a tiny LLaVA with the openai SDK, images as data URLs
(PNG, JPEG, WebP, GIF) and as http URLs from a local server; its answers equal transformers'; the same picture
by URL or inline is a prefix-cache hit; bad images, fetches, sizes and counts are 400s in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from engine.config import ImageLimits
from engine.image_inputs import ImageInput
from engine.openai_images import image_processor
from tests.engine.file_server import static_files
from tests.engine.llava_inputs import data_url, picture, png_bytes, transformers_answer
from tests.engine.serving import engine_server, sdk

PNG = png_bytes(picture(1))
LIMITS = ImageLimits(max_images=2, max_bytes=len(PNG) + 100, fetch_timeout_s=2.0)


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    with static_files({"/cat.png": PNG, "/big.png": b"x" * (LIMITS.max_bytes + 1), "/junk.png": b"not an image"}) as url:
        yield url


@pytest.fixture(scope="module")
def client(tiny_llava_dir: Path) -> Iterator[openai.OpenAI]:
    with engine_server(tiny_llava_dir, image_limits=LIMITS) as url:
        yield sdk(url)


def ask(client: openai.OpenAI, *images: str, text: str = "What is in this picture?", **extra: object) -> dict:
    content = [{"type": "text", "text": text}, *({"type": "image_url", "image_url": {"url": u}} for u in images)]
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                          max_tokens=6, temperature=0, extra_body={"return_token_ids": True, **extra}
                                          ).model_dump()


def test_an_inline_image_answers_as_transformers_and_counts_its_tokens(client: openai.OpenAI,
                                                                      tiny_llava_dir: Path) -> None:
    answer = ask(client, data_url(picture(1)), ignore_eos=True)
    prompt = answer["prompt_token_ids"]
    pixels = image_processor(tiny_llava_dir)(images=[picture(1)], return_tensors="pt")["pixel_values"]
    expected, _ = transformers_answer(tiny_llava_dir, prompt, [ImageInput(0, 16, 0, pixels[0])], max_new_tokens=6)
    assert answer["choices"][0]["token_ids"] == expected
    assert answer["usage"]["prompt_tokens"] == len(prompt) and prompt.count(prompt[-1]) < 16  # 16 image tokens
    assert max(prompt.count(t) for t in set(prompt)) == 16


def test_a_url_image_is_fetched_and_the_same_picture_is_a_cache_hit(client: openai.OpenAI, files: str) -> None:
    text = "Describe this picture in a few words, one after the other, please, and then stop: "
    inline = ask(client, data_url(picture(1)), text=text)
    fetched = ask(client, f"{files}/cat.png", text=text)
    assert fetched["choices"][0]["message"]["content"] == inline["choices"][0]["message"]["content"]
    assert fetched["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    other = ask(client, data_url(picture(2)), text=text)
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] < fetched["usage"]["prompt_tokens_details"][
        "cached_tokens"]


@pytest.mark.parametrize("format", ["JPEG", "WEBP", "GIF"])
def test_other_formats_decode(client: openai.OpenAI, format: str) -> None:
    assert ask(client, data_url(picture(3, (20, 20)), format))["usage"]["prompt_tokens"] > 16


def test_streaming_with_an_image(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny", max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(picture(1))}}]}])
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize(("images", "text", "code"), [
    (["data:image/png;base64,bm90IGFuIGltYWdl"], "hi", "invalid_image"),  # "not an image"
    (["data:image/png;base64,@@@"], "hi", "invalid_value"),
    (["data:image/png,rawbytes"], "hi", "invalid_value"),
    (["ftp://example.com/cat.png"], "hi", "invalid_value"),
    (["{files}/missing.png"], "hi", "image_fetch_failed"),
    (["http://127.0.0.1:9/cat.png"], "hi", "image_fetch_failed"),  # nothing listens there
    (["{files}/junk.png"], "hi", "invalid_image"),
    (["{files}/big.png"], "hi", "image_too_large"),
    ([data_url(picture(1, (200, 200)))], "hi", "image_too_large"),
    (["{files}/cat.png"] * 3, "hi", "too_many_images"),
    (["{files}/cat.png"], "two <image> tokens", "invalid_value"),
])
def test_bad_images_are_400s(client: openai.OpenAI, files: str, images: list[str], text: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, *(url.format(files=files) for url in images), text=text)
    assert error.value.code == code, error.value.message
    assert error.value.param is not None and error.value.param.startswith("messages")


def test_a_bad_image_part_names_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x", "detail": "max"}}]}])
    assert error.value.param == "messages[0].content[1].image_url.detail"
