"""vLLM's request extensions that clients send to any OpenAI-compatible server, over a real socket with
the openai SDK's extra_body: skip_special_tokens, include_stop_str_in_output, truncate_prompt_tokens,
stream_options.continuous_usage_stats, the guided_* fields, and the chat template's
chat_template_kwargs, add_generation_prompt and continue_final_message (checked on the rendered
prompt, through a template that reads a variable of its own)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.tokenizer import Tokenizer
from tests.engine.serving import engine_server, sdk

MODEL = "tiny"
THINKING = "{%- if enable_thinking %}<think>{% endif -%}"


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model whose template opens the assistant's turn with <think> when enable_thinking is set."""
    folder = tmp_path_factory.mktemp("thinking") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] += THINKING
    config_path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def url(model_dir: Path) -> Iterator[str]:
    with engine_server(model_dir, MODEL) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return sdk(url)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer(model_dir)


def prompt_tokens(client: openai.OpenAI, messages: list[dict], **extra: object) -> int:
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1, extra_body=extra)
    assert answer.usage is not None
    return answer.usage.prompt_tokens


def test_the_chat_template_fields_change_the_rendered_prompt(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    chat = [{"role": "user", "content": "Think first."}]
    rendered = tokenizer.apply_chat_template(chat)
    assert prompt_tokens(client, chat) == len(tokenizer.encode(rendered))
    thinking = tokenizer.apply_chat_template(chat, enable_thinking=True)
    assert thinking.endswith("<think>") and not rendered.endswith("<think>")
    assert prompt_tokens(client, chat, chat_template_kwargs={"enable_thinking": True}) == len(tokenizer.encode(thinking))
    closed = tokenizer.apply_chat_template(chat, add_generation_prompt=False)
    assert prompt_tokens(client, chat, add_generation_prompt=False) == len(tokenizer.encode(closed))
    started = [*chat, {"role": "assistant", "content": "The first step is"}]
    continued = tokenizer.apply_chat_template(started, add_generation_prompt=False)
    continued = continued[:continued.rindex("The first step is") + len("The first step is")]
    assert prompt_tokens(client, started, continue_final_message=True, add_generation_prompt=False) == \
        len(tokenizer.encode(continued))
    assert len(tokenizer.encode(continued)) < len(tokenizer.encode(tokenizer.apply_chat_template(started)))


def test_special_tokens_and_stop_strings_in_the_text(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    start = tokenizer.token_to_id("<|start|>")
    forced = {"temperature": 0, "max_tokens": 3, "logit_bias": {str(start): 100}}
    skipped = client.completions.create(model=MODEL, prompt="x", **forced, extra_body={"ignore_eos": True})
    kept = client.completions.create(model=MODEL, prompt="x", **forced,
                                     extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert skipped.choices[0].text == "" and kept.choices[0].text == "<|start|>" * 3
    the = tokenizer.encode(" the")[0]
    ask = {"model": MODEL, "prompt": "x", "temperature": 0, "max_tokens": 5, "stop": ["the"],
           "logit_bias": {str(the): 100}}
    assert client.completions.create(**ask).choices[0].text == " "
    assert client.completions.create(**ask, extra_body={"include_stop_str_in_output": True}).choices[0].text == " the"


def test_truncated_prompts_and_continuous_usage(client: openai.OpenAI) -> None:
    long = "one two three four five six seven eight nine ten " * 4
    answer = client.completions.create(model=MODEL, prompt=long, max_tokens=2, extra_body={"truncate_prompt_tokens": 7})
    assert answer.usage.prompt_tokens == 7
    chunks = list(client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=5, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    counts = [c.usage.completion_tokens for c in chunks if c.choices and c.choices[0].text]
    assert counts == sorted(counts) and counts[-1] == 5 and chunks[-1].usage.completion_tokens == 5


def test_guided_fields_hold_the_answer(client: openai.OpenAI) -> None:
    for seed in range(4):
        choice = client.completions.create(model=MODEL, prompt="Pick:", max_tokens=8, seed=seed, temperature=1.0,
                                           extra_body={"guided_choice": ["red", "green", "blue"]}).choices[0]
        assert choice.text in {"red", "green", "blue"}
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    text = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=20, temperature=1.0, seed=1,
                                     extra_body={"guided_json": schema}).choices[0].text
    assert isinstance(json.loads(text)["ok"], bool)


@pytest.mark.parametrize(("body", "param"), [
    ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": "thinking"}, "chat_template_kwargs"),
    ({"continue_final_message": True}, "continue_final_message"),  # the last message is the user's
    ({"continue_final_message": True, "add_generation_prompt": True,
      "messages": [{"role": "assistant", "content": "So"}]}, "continue_final_message"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ({"spaces_between_special_tokens": False}, "spaces_between_special_tokens"),
    ({"guided_regex": "a+", "structured_outputs": {"regex": "b+"}}, "structured_outputs"),
    ({"stream": True, "stream_options": {"continuous_usage": True}}, "continuous_usage"),
])
def test_bad_extensions_are_400s(url: str, body: dict, param: str) -> None:
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | body
    response = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
