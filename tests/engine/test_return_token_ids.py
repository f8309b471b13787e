"""vLLM's `return_token_ids` over a real socket with the openai SDK's extra_body: the prompt's ids as the
engine's /tokenize gives them and each choice's answer ids, whole and streamed (chat and completions,
n > 1 and a batch of prompts), the streamed ids adding up to the whole answer's; nothing extra unasked;
and through the gateway to an in-process engine. And `return_tokens_as_token_ids`: logprobs' tokens
written `token_id:N`, the same ids the answer's are."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.tokenizer import Tokenizer
from tests.engine.serving import engine_server, sdk
from tests.gateway.harness import gateway_config, running_gateway

MODEL = "tiny"
MESSAGES = [{"role": "user", "content": "Name a colour."}]
ASK = {"return_token_ids": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL) as base:
        yield base


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer(tiny_model_dir)


def rendered_ids(url: str) -> list[int]:
    response = httpx.post(f"{url}/tokenize", json={"model": MODEL, "messages": MESSAGES}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_a_whole_chat_answer_has_its_prompt_and_answer_ids(url: str, tokenizer: Tokenizer) -> None:
    client = sdk(url)
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, n=2,
                                            extra_body=ASK)
    extra = answer.model_extra or {}
    assert extra["prompt_token_ids"] == rendered_ids(url)
    assert answer.usage is not None and answer.usage.prompt_tokens == len(extra["prompt_token_ids"])
    for choice in answer.choices:
        ids = (choice.model_extra or {})["token_ids"]
        assert len(ids) == 12 and tokenizer.decode(ids) == choice.message.content
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0)
    assert "prompt_token_ids" not in (plain.model_extra or {})
    assert "token_ids" not in (plain.choices[0].model_extra or {})


def test_streamed_ids_add_up_to_the_whole_answer(url: str) -> None:
    client = sdk(url)
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0,
                                           extra_body=ASK)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0,
                                            stream=True, extra_body=ASK)
    chunks = list(stream)
    prompts = [c.model_extra["prompt_token_ids"] for c in chunks if "prompt_token_ids" in (c.model_extra or {})]
    assert prompts == [(whole.model_extra or {})["prompt_token_ids"]]  # once, on the first chunk
    streamed = [t for c in chunks for choice in c.choices for t in (choice.model_extra or {})["token_ids"]]
    assert streamed == (whole.choices[0].model_extra or {})["token_ids"]


def test_completions_give_each_choice_its_prompt(url: str, tokenizer: Tokenizer) -> None:
    client = sdk(url)
    prompts = ["The sky is", "Two and two make"]
    whole = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, n=2, extra_body=ASK)
    assert len(whole.choices) == 4
    for choice in whole.choices:
        extra = choice.model_extra or {}
        assert extra["prompt_token_ids"] == tokenizer.encode(prompts[choice.index // 2])
        assert len(extra["token_ids"]) == 6 and tokenizer.decode(extra["token_ids"]) == choice.text
    stream = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, n=2, stream=True,
                                       extra_body=ASK)
    streamed: dict[int, list[int]] = {}
    prompt_ids: dict[int, list[list[int]]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            extra = choice.model_extra or {}
            streamed.setdefault(choice.index, []).extend(extra["token_ids"])
            if "prompt_token_ids" in extra:
                prompt_ids.setdefault(choice.index, []).append(extra["prompt_token_ids"])
    for choice in whole.choices:
        assert streamed[choice.index] == (choice.model_extra or {})["token_ids"]
        assert prompt_ids[choice.index] == [tokenizer.encode(prompts[choice.index // 2])]


def test_the_gateway_passes_the_ids_on_from_an_in_process_engine(tiny_model_dir: Path, tmp_path: Path,
                                                                  tokenizer: Tokenizer) -> None:
    models = [{"model_name": "local", "litellm_params": {"model": "pitstop-local/local",
                                                         "model_dir": str(tiny_model_dir), "num_blocks": 64}}]
    with running_gateway(gateway_config(tmp_path, models)) as gateway, gateway.openai() as client:
        answer = client.chat.completions.create(model="local", messages=MESSAGES, max_tokens=5, temperature=0,
                                                extra_body=ASK)
    ids = (answer.choices[0].model_extra or {})["token_ids"]
    assert len(ids) == 5 and tokenizer.decode(ids) == answer.choices[0].message.content
    assert (answer.model_extra or {})["prompt_token_ids"]


def test_a_wrong_type_is_a_400(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                          json={"model": MODEL, "messages": MESSAGES, "return_token_ids": "yes"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "return_token_ids"



def test_logprobs_name_their_tokens_by_id(url: str, tokenizer: Tokenizer) -> None:
    client = sdk(url)
    ask = {**ASK, "return_tokens_as_token_ids": True}
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=3, extra_body=ask)
    ids = (chat.choices[0].model_extra or {})["token_ids"]
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content is not None
    entries = chat.choices[0].logprobs.content
    assert [e.token for e in entries] == [f"token_id:{t}" for t in ids]
    assert all(e.bytes == list(tokenizer.decode([t], skip_special_tokens=False).encode()) for e, t in zip(
        entries, ids, strict=True))
    assert entries[0].top_logprobs[0].token == entries[0].token  # greedy: the likeliest is the one taken
    completion = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0,
                                           logprobs=2, extra_body=ask).choices[0]
    assert completion.logprobs is not None and completion.logprobs.tokens is not None
    completion_ids = (completion.model_extra or {})["token_ids"]
    assert completion.logprobs.tokens == [f"token_id:{t}" for t in completion_ids]
    offsets = completion.logprobs.text_offset or []
    assert offsets[0] == 0 and offsets[-1] == len(tokenizer.decode(completion_ids[:-1]))
    plain = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0,
                                      logprobs=2).choices[0]
    assert plain.logprobs is not None and plain.logprobs.tokens is not None
    assert not any(t.startswith("token_id:") for t in plain.logprobs.tokens)


def test_an_echoed_prompt_streams_without_answer_ids(url: str, tokenizer: Tokenizer) -> None:
    """With echo, a choice's first chunk is its prompt's text: its ids are the prompt's (prompt_token_ids),
    and the answer's ids come on the chunks that carry the answer's text, not on the echo."""
    prompt = "The sky is"
    stream = sdk(url).completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True,
                                         stream=True, extra_body=ASK)
    chunks = [c.choices[0] for c in stream if c.choices]
    echo, answer = chunks[0], chunks[1:]
    assert echo.text == prompt
    assert (echo.model_extra or {})["token_ids"] == []
    assert (echo.model_extra or {})["prompt_token_ids"] == tokenizer.encode(prompt)
    ids = [t for choice in answer for t in (choice.model_extra or {})["token_ids"]]
    assert len(ids) == 6 and tokenizer.decode(ids) == "".join(choice.text for choice in answer)
