"""OpenAI's custom tools in Chat Completions on Pitstop's engine, over a real socket with the openai SDK:
told to call one (`tool_choice` names it, or "required"), the tiny model's random weights write an input
that its Lark or regex grammar accepts, answered as a custom call, whole and streamed; a model that
writes the call itself (a tool-call parser) gets it back as a custom call too; a chat that replays custom
calls is rendered; what cannot be met is a 400."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from engine.custom_tools import CustomCalls, custom_tools, function_body
from engine.server.app import create_app
from engine.server.errors import APIError
from tests.engine.serving import engine_server, sdk, serve_in_thread
from tests.engine.test_forced_tools import MESSAGES, TIME, TOOLS
from tests.engine.test_tool_parsers import _thinking_engine

MODEL = "tiny"
ADD = {"type": "custom", "custom": {"name": "add", "description": "Adds two numbers.", "format": {
    "type": "grammar", "grammar": {"syntax": "lark", "definition": 'start: "add " NUM " " NUM\nNUM: /[0-9]{1,4}/'}}}}
ADD_INPUT = re.compile(r"add [0-9]{1,4} [0-9]{1,4}")
TICKET = {"type": "custom", "custom": {"name": "ticket", "format": {
    "type": "grammar", "grammar": {"syntax": "regex", "definition": r"[A-Z]{3}-[0-9]{2}"}}}}
NOTE = {"type": "custom", "custom": {"name": "note"}}  # free text
GET_TIME = TOOLS[1]


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return sdk(url)


def named(name: str) -> dict:
    return {"type": "custom", "custom": {"name": name}}


@pytest.mark.parametrize("tool, matches", [(ADD, ADD_INPUT), (TICKET, re.compile(r"[A-Z]{3}-[0-9]{2}"))])
def test_a_named_custom_tool_is_called_with_an_input_its_grammar_accepts(client: openai.OpenAI, tool: dict,
                                                                         matches: re.Pattern) -> None:
    for seed in range(4):
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[GET_TIME, tool],  # type: ignore[list-item]
                                                tool_choice=named(tool["custom"]["name"]), seed=seed,  # type: ignore[arg-type]
                                                temperature=1.5, max_tokens=40)
        choice = answer.choices[0]
        assert choice.finish_reason == "stop" and choice.message.content is None  # as a named function's
        calls = choice.message.tool_calls or []
        assert len(calls) == 1 and calls[0].type == "custom" and calls[0].id.startswith("call_")
        assert calls[0].custom.name == tool["custom"]["name"]  # type: ignore[union-attr]
        assert matches.fullmatch(calls[0].custom.input), calls[0].custom.input  # type: ignore[union-attr]


def test_required_calls_a_function_or_a_custom_tool_each_held_to_its_own_shape(client: openai.OpenAI) -> None:
    seen = set()
    for seed in range(16):
        answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[GET_TIME, ADD],  # type: ignore[list-item]
                                                tool_choice="required", parallel_tool_calls=False, seed=seed,
                                                temperature=2.0, max_tokens=40)
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls or []) == 1
        call = (choice.message.tool_calls or [])[0]
        if call.type == "custom":
            assert call.custom.name == "add" and ADD_INPUT.fullmatch(call.custom.input)
        else:
            assert call.function.name == "get_time"
            jsonschema.validate(json.loads(call.function.arguments), TIME)
        seen.add(call.type)
    assert seen == {"custom", "function"}  # the grammar lets the model pick either


def test_a_free_text_custom_tool_takes_whatever_is_written(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[NOTE], tool_choice=named("note"),  # type: ignore[list-item, arg-type]
                                         seed=3, max_tokens=12, extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "length"  # cut: the text comes back, as a cut function call's does
    assert cut.choices[0].message.tool_calls is None and cut.choices[0].message.content
    engine = _thinking_engine(tiny_model_dir, "Buy milk.\nAnd bread.")
    with serve_in_thread(create_app(engine, "tiny")) as url, sdk(url) as scripted:
        whole = scripted.chat.completions.create(model="tiny", messages=MESSAGES, tools=[NOTE],  # type: ignore[list-item]
                                                 tool_choice=named("note"), max_tokens=64)  # type: ignore[arg-type]
    assert [(c.type, c.custom.name, c.custom.input) for c in whole.choices[0].message.tool_calls or []] == [  # type: ignore[union-attr]
        ("custom", "note", "Buy milk.\nAnd bread.")]


def test_a_forced_custom_call_streams_as_one_custom_delta(client: openai.OpenAI) -> None:
    ask = {"model": MODEL, "messages": MESSAGES, "tools": [ADD], "tool_choice": named("add"), "seed": 5,
           "temperature": 1.0, "max_tokens": 40}
    whole = (client.chat.completions.create(**ask).choices[0].message.tool_calls or [])[0]
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [call.model_dump() for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert [(d["index"], d["type"], d["custom"]) for d in deltas] == [
        (0, "custom", {"name": "add", "input": whole.custom.input})]  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "stop" and not any(c.choices[0].delta.content for c in chunks
                                                                     if c.choices)


def test_a_chat_that_replays_custom_calls_is_rendered(client: openai.OpenAI) -> None:
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "custom", "custom": {"name": "add", "input": "add 1 2"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[ADD], max_tokens=4)  # type: ignore[arg-type, list-item]
    no_tools = client.chat.completions.create(model=MODEL, messages=history, max_tokens=4)  # type: ignore[arg-type]
    assert answer.usage is not None and no_tools.usage is not None
    assert answer.usage.prompt_tokens > no_tools.usage.prompt_tokens  # the tool's definition was rendered


WRITTEN = '<tool_call>\n{"name": "add", "arguments": {"input": "add 4 5"}}\n</tool_call>'


def test_a_custom_call_the_model_writes_comes_back_as_a_custom_call(tiny_model_dir: Path) -> None:
    engine = _thinking_engine(tiny_model_dir, "Adding.\n" + WRITTEN)
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="hermes")) as url, sdk(url) as client:
        whole = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[ADD], max_tokens=64)  # type: ignore[list-item]
        chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[ADD], max_tokens=64,  # type: ignore[list-item]
                                                     stream=True))
    message = whole.choices[0].message
    assert message.content == "Adding.\n" and whole.choices[0].finish_reason == "tool_calls"
    assert [(c.type, c.custom.name, c.custom.input) for c in message.tool_calls or []] == [  # type: ignore[union-attr]
        ("custom", "add", "add 4 5")]
    deltas = [call.model_dump() for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert [(d["type"], d["custom"]) for d in deltas] == [("custom", {"name": "add", "input": "add 4 5"})]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Adding.\n"


@pytest.mark.parametrize("fields", [
    {"tools": [{"type": "custom", "custom": {}}]},
    {"tools": [{"type": "custom"}]},
    {"tools": [{"type": "custom", "custom": {"name": "x", "format": {"type": "grammar", "grammar": {
        "syntax": "ebnf", "definition": "start: x"}}}}]},
    {"tools": [{"type": "custom", "custom": {"name": "x", "format": {"type": "json"}}}]},
    {"tools": [{"type": "custom", "custom": {"name": "x", "format": {"type": "grammar", "grammar": {
        "syntax": "lark", "definition": "start: undefined_rule"}}}}], "tool_choice": named("x")},
    {"tools": [{"type": "custom", "custom": {"name": "x", "format": {"type": "grammar", "grammar": {
        "syntax": "regex", "definition": "(unclosed"}}}}], "tool_choice": named("x")},
    {"tools": [ADD], "tool_choice": named("subtract")},
    {"tools": [ADD], "tool_choice": {"type": "custom"}},
])
def test_custom_tools_that_cannot_be_used_are_400s(url: str, fields: dict) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, **fields}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] in ("tools", "tools[0]", "tools[0].custom.format", "tool_choice")


def test_custom_calls_written_as_functions_are_turned_back_whole_and_streamed() -> None:
    """What the gateway does for upstreams without custom tools: the chat goes as functions, and their
    calls come back as custom calls, a streamed one's arguments joined first."""
    chat = {"messages": [*MESSAGES, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "custom", "custom": {"name": "add", "input": "add 1 2"}}]}],
        "tools": [ADD, GET_TIME], "tool_choice": named("add")}
    as_functions = function_body(chat, custom_tools(chat["tools"]))
    assert as_functions["tools"][0]["function"]["parameters"]["required"] == ["input"]
    assert "lark grammar" in as_functions["tools"][0]["function"]["description"]
    assert as_functions["tools"][1] == GET_TIME and as_functions["tool_choice"] == {
        "type": "function", "function": {"name": "add"}}
    assert as_functions["messages"][-1]["tool_calls"][0]["function"] == {"name": "add",
                                                                        "arguments": '{"input": "add 1 2"}'}
    assert chat["tools"][0] == ADD  # the client's body is left as it was
    calls = CustomCalls(frozenset({"add"}))
    pieces = [{"index": 0, "id": "c9", "type": "function", "function": {"name": "add", "arguments": ""}},
              {"index": 0, "function": {"arguments": '{"input": "add'}}, {"index": 0, "function": {"arguments": ' 7 8"}'}},
              {"index": 1, "id": "c10", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]
    out = [calls.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]})
           for piece in pieces]
    last = calls.chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    assert [c["choices"][0]["delta"].get("tool_calls") for c in out] == [None, None, None, [pieces[3]]]
    assert last["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "c9", "type": "custom", "custom": {"name": "add", "input": "add 7 8"}}]
    with pytest.raises(APIError):
        custom_tools([{"type": "custom", "custom": {"name": 3}}])
