"""Qwen3-VL-MoE with images over HTTP: `pitstop engine make-tiny-model --family qwen3_vl_moe` writes the folder,
`pitstop engine serve`'s server runs it, and the openai SDK asks: an image's answer equals transformers' (DeepStack,
interleaved M-RoPE), /tokenize and usage count the image's own grid tokens, two sizes and a text-only chat, the
same picture again a prefix-cache hit with the same answer; a video part is a 400; the gateway's token estimate
for the folder is the processor's count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.image_token_counts import QwenResize, folder_image_tokens
from gateway.cli import main
from tests.engine.llava_inputs import data_url
from tests.engine.qwen2_5_vl_inputs import picture
from tests.engine.serving import engine_server
from tests.engine.test_qwen2_5_vl_server import ask, images_of, messages
from tests.engine.test_qwen3_vl_engine import transformers_answer

TEXT = "Describe this picture in a few words, one after the other, please, and then stop: "


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "qwen3_vl_moe"
    assert main(["engine", "make-tiny-model", str(out), "--family", "qwen3_vl_moe"]) == 0
    return out


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[str]:
    with engine_server(model_dir) as url:
        yield url


def test_an_image_answers_as_transformers_and_tokenize_counts_it(served: str, model_dir: Path) -> None:
    answer = ask(served, data_url(picture(1)), ignore_eos=True)
    prompt = answer["prompt_token_ids"]
    images = images_of(model_dir, prompt, [picture(1)])
    assert images[0].length == 12
    assert answer["choices"][0]["token_ids"] == transformers_answer(model_dir, prompt, images, 6)[0]
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    counted = httpx.post(f"{served}/tokenize", json={"model": "tiny", "messages": messages(data_url(picture(1)))})
    assert counted.json()["tokens"] == prompt
    estimate = folder_image_tokens(model_dir)  # what the gateway counts for this folder's images
    assert isinstance(estimate, QwenResize) and estimate.tokens(32, 24) == 12 and estimate.tokens(48, 40) == 30


def test_two_sizes_a_text_only_chat_and_a_cache_hit(served: str, model_dir: Path) -> None:
    pictures = [picture(1), picture(2, (48, 40))]
    two = ask(served, *(data_url(p) for p in pictures), ignore_eos=True)
    prompt = two["prompt_token_ids"]
    images = images_of(model_dir, prompt, pictures)
    assert [image.length for image in images] == [12, 30]
    assert two["choices"][0]["token_ids"] == transformers_answer(model_dir, prompt, images, 6)[0]
    text_only = ask(served)
    assert text_only["usage"]["prompt_tokens"] < len(prompt) - 42 and text_only["choices"][0]["message"]["content"]
    first = ask(served, data_url(picture(3)), text=TEXT)
    again = ask(served, data_url(picture(3)), text=TEXT)
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > first["usage"]["prompt_tokens_details"][
        "cached_tokens"]


def test_a_video_part_is_a_400(served: str) -> None:
    from tests.engine.serving import sdk

    with pytest.raises(openai.BadRequestError) as error:
        sdk(served).chat.completions.create(model="tiny", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what happens?"}, {"type": "video_url", "video_url": {"url": "x.mp4"}}]}])
    assert error.value.status_code == 400 and error.value.param is not None
