"""Forced tool calls (`tool_choice` "required" or a function by name) on the tiny model over a real
socket with the openai SDK: its random weights still call the tool it was told to, with arguments
its schema accepts, as OpenAI's `tool_calls`, whole and streamed; and the 400s for what cannot be met."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.engine.serving import engine_server, sdk

MODEL = "tiny"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What should I wear in Oslo?"}]


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return sdk(url)


def check_calls(calls, allowed: set[str]) -> None:  # noqa: ANN001
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_named_function_is_called(client: openai.OpenAI) -> None:
    for seed in range(4):
        answer = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, tools=TOOLS, seed=seed, temperature=1.0, max_tokens=80,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = answer.choices[0]
        assert choice.message.content is None and choice.finish_reason == "stop"  # as OpenAI finishes it
        check_calls(choice.message.tool_calls, {"get_weather"})
        assert len(choice.message.tool_calls) == 1


def test_required_calls_any_tool_and_parallel_false_allows_one(client: openai.OpenAI) -> None:
    seen: set[str] = set()
    for seed in range(12):
        single = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                                parallel_tool_calls=False, seed=seed, temperature=2.0, max_tokens=80)
        choice = single.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        check_calls(choice.message.tool_calls, set(SCHEMAS))
        seen.add(choice.message.tool_calls[0].function.name)
    assert seen == set(SCHEMAS)  # the grammar lets the model pick either


def test_parallel_calls_come_back_as_several_tool_calls(client: openai.OpenAI) -> None:
    """Without parallel_tool_calls false the array is open: a random model may add calls until the
    context ends (then the text comes back, finish "length"); those that close it get every call."""
    counts = []
    for seed in range(6):
        choice = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                                seed=seed, temperature=1.0, max_tokens=300).choices[0]
        if choice.finish_reason == "tool_calls":
            check_calls(choice.message.tool_calls, set(SCHEMAS))
            counts.append(len(choice.message.tool_calls))
        else:
            assert choice.finish_reason == "length" and choice.message.content.startswith('[{"name":')
    assert counts and max(counts) > 1


def test_a_forced_call_streams_as_tool_call_deltas(client: openai.OpenAI) -> None:
    ask = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "seed": 2, "temperature": 1.0, "max_tokens": 80,
           "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    whole = client.chat.completions.create(**ask).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == \
        [(0, call.function.name, call.function.arguments) for call in whole]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_call_cut_by_max_tokens_comes_back_as_text(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                            max_tokens=3, seed=1)
    choice = answer.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content.startswith("[")


@pytest.mark.parametrize(("fields", "param"), [
    ({"tool_choice": {"type": "function", "function": {"name": "get_stock"}}, "tools": TOOLS}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function"}, "tools": TOOLS}, "tool_choice"),
    ({"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
    ({"tool_choice": "required", "tools": TOOLS, "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_forced_calls_that_cannot_be_met_are_400s(url: str, fields: dict, param: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, **fields}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
