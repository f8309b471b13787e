"""vLLM's POST /tokenize and /detokenize over a real socket: a chat's count is the prompt tokens its
generation is billed (tools, template fields and all), a prompt's is its encoding, the ids decode back
to the text; what generation would refuse is a 400, another model a 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.tokenizer import Tokenizer
from tests.engine.serving import engine_server, sdk

MODEL = "tiny"
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                         "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL) as base:
        yield base


def billed(url: str, messages: list[dict], **extra: object) -> int:
    answer = sdk(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=1, extra_body=extra)  # type: ignore[arg-type]
    assert answer.usage is not None
    return answer.usage.prompt_tokens


@pytest.mark.parametrize("extra", [{}, {"tools": [TOOL]}, {"add_generation_prompt": False},
                                   {"chat_template_kwargs": {"note": "x"}}])
def test_a_chats_count_is_what_its_generation_is_billed(url: str, extra: dict) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Count me, héllo 😀"},
                {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Again."}]
    counted = httpx.post(f"{url}/tokenize", json={"model": MODEL, "messages": messages, **extra}).json()
    assert counted["count"] == len(counted["tokens"]) == billed(url, messages, **extra)
    assert counted["max_model_len"] == 512 and counted["token_strs"] is None


def test_a_prompts_tokens_decode_back_to_it(url: str, tiny_model_dir: Path) -> None:
    text = "The quick brown fox, naïve café 😀"
    counted = httpx.post(f"{url}/tokenize", json={"prompt": text, "return_token_strs": True}).json()  # model left out
    tokenizer = Tokenizer(tiny_model_dir)
    assert counted["tokens"] == tokenizer.encode(text)
    assert counted["token_strs"] == [tokenizer.id_to_token(i) for i in counted["tokens"]]  # byte-level pieces
    decoded = httpx.post(f"{url}/detokenize", json={"model": MODEL, "tokens": counted["tokens"]}).json()
    assert decoded == {"prompt": text}
    answer = sdk(url).completions.create(model=MODEL, prompt=text, max_tokens=1)
    assert answer.usage is not None and answer.usage.prompt_tokens == counted["count"]


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/tokenize", {"model": MODEL}, 400, "prompt"),
    ("/tokenize", {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt"),
    ("/tokenize", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/tokenize", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("/tokenize", {"model": MODEL, "prompt": "x", "add_special_tokens": True}, 400, "add_special_tokens"),
    ("/tokenize", {"model": "other", "prompt": "x"}, 404, "model"),
    ("/tokenize", ["x"], 400, None),
    ("/detokenize", {"model": MODEL, "tokens": [1, -2]}, 400, "tokens"),
    ("/detokenize", {"model": MODEL, "tokens": [10 ** 9]}, 400, "tokens"),
    ("/detokenize", {"model": MODEL, "tokens": "12"}, 400, "tokens"),
])
def test_what_generation_would_refuse_is_a_clear_error(url: str, path: str, body: object, status: int,
                                                        param: str | None) -> None:
    answer = httpx.post(f"{url}{path}", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param

