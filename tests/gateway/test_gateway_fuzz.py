"""Fuzz the HTTP API with hypothesis: generated bodies (near-valid requests with wrong types, odd values,
unknown fields, and raw bytes) against /v1/chat/completions, /v1/completions, /v1/responses,
/v1/conversations, /v1/messages and /v1/feedback, through the three backends (litellm, direct HTTP, an in-process engine).
The gateway must never answer a 5xx (the upstream is healthy), nor end a stream with a 5xx error event,
and every answer is JSON or SSE in the API's shape (Anthropic's for /v1/messages, else OpenAI's)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODELS = ["up-direct", "up-litellm", "tiny", "grp"]

# JSON can carry what a float cannot hold (10**400) and half a UTF-16 pair ("\\ud800"); bodies are sent
# as json.dumps writes them (ASCII, surrogates escaped), so both reach the gateway.
surrogates = st.lists(st.sampled_from(["\ud800", "\udfff", "\ud83d\ude00", "x"]), min_size=1, max_size=3).map("".join)
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.integers(-(10**400), 10**400)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | surrogates)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
texts = st.text(max_size=40).filter(lambda t: "[" not in t) | surrogates  # no fault directives for the upstream
short = st.text(min_size=1, max_size=16)
parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), min_size=1, max_size=2)
tool_call = st.fixed_dictionaries({"id": st.from_regex(r"call_[a-z0-9]{1,6}", fullmatch=True), "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                                                                      "arguments": st.just('{"city": "Paris"}')})})
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer"]),
                                 "content": texts | parts},
                                optional={"name": st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                          "tool_calls": st.lists(tool_call, max_size=2) | json_values})
tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True)},
    optional={"description": texts, "parameters": st.just({"type": "object", "properties": {}})})})
# Values every backend takes: near-valid bodies get past validation to the upstream.
COMMON = {
    "max_tokens": st.integers(1, 40), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "n": st.just(1), "stream": st.booleans(), "stop": texts | st.lists(short, max_size=4),
    "seed": st.integers(0, 2**31), "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "user": short, "session_id": short, "priority": st.integers(-10, 10), "pin_ttl_s": st.floats(0, 600),
    "cost_preference": st.floats(0, 10),
}
CHAT = {"messages": st.lists(message, min_size=1, max_size=3), "tools": st.lists(tool, min_size=1, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none"]), "max_completion_tokens": st.integers(1, 40), **COMMON}
COMPLETION = {"prompt": texts.filter(bool) | st.lists(short, min_size=1, max_size=1), **COMMON}
names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
# OpenAI's Responses API: input items and function tools.
item = (st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]),
                               "content": texts | st.lists(st.fixed_dictionaries({"type": st.just("input_text"),
                                                                                  "text": texts}), max_size=2)})
        | st.fixed_dictionaries({"type": st.just("function_call"), "call_id": names, "name": names,
                                 "arguments": st.just('{"city": "Paris"}')})
        | st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": names, "output": texts})
        | st.fixed_dictionaries({"type": st.just("custom_tool_call"), "call_id": names, "name": names, "input": texts})
        | st.fixed_dictionaries({"type": st.just("custom_tool_call_output"), "call_id": names, "output": texts}))
RESPONSES = {"input": texts.filter(bool) | st.lists(item, min_size=1, max_size=3), "instructions": texts,
             "tools": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "custom"]), "name": names}),
                               min_size=1, max_size=2),
             "tool_choice": st.sampled_from(["auto", "none"]), "max_output_tokens": st.integers(1, 40),
             "store": st.booleans(), "previous_response_id": st.just("resp_nope") | short, "stream": st.booleans(),
             "temperature": st.floats(0, 2), "user": short, "metadata": st.dictionaries(short, short, max_size=2),
             "conversation": st.just("conv_nope") | short | st.fixed_dictionaries({"id": short})}
# OpenAI's Conversations API: a conversation's first items and metadata, items added, a page of them.
CONVERSATION = {"items": st.lists(item, max_size=3), "metadata": st.dictionaries(short, short, max_size=3)}
ADDED = {"items": st.lists(item, min_size=1, max_size=3)}
pages = st.fixed_dictionaries({}, optional={"limit": st.integers(-1, 101) | short, "order": st.sampled_from(
    ["asc", "desc", "up"]), "after": short, "include": short})
# Anthropic's Messages API: content blocks, custom tools.
text_block = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
blocks = st.lists(text_block
                  | st.fixed_dictionaries({"type": st.just("tool_use"), "id": names, "name": names,
                                           "input": st.just({"city": "Paris"}) | json_values})
                  | st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": names},
                                          optional={"content": texts | st.lists(text_block, max_size=2),
                                                    "is_error": st.booleans()})
                  | st.fixed_dictionaries({"type": st.just("image"), "source": st.just(
                      {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}) | json_values}),
                  min_size=1, max_size=3)
MESSAGES = {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                        "content": texts | blocks}), min_size=1, max_size=3),
            "max_tokens": st.integers(1, 40), "system": texts | st.lists(text_block, max_size=2),
            "tools": st.lists(st.fixed_dictionaries({"name": names, "input_schema": st.just({"type": "object"})},
                                                    optional={"description": texts}), min_size=1, max_size=2),
            "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}]),
            "stop_sequences": st.lists(short, max_size=3), "temperature": st.floats(0, 1), "top_k": st.integers(1, 50),
            "stream": st.booleans(), "metadata": st.fixed_dictionaries({"user_id": short}), "session_id": short}
FEEDBACK = {"request_id": short, "session_id": short, "metric": st.text(min_size=1, max_size=64),
            "value": st.floats(-1e6, 1e6) | st.integers(-5, 5), "extra": st.dictionaries(short, short, max_size=2)}


@st.composite
def with_stream_options(draw: st.DrawFn, bodies: st.SearchStrategy[dict]) -> dict:
    body = draw(bodies)
    if body.get("stream") is True and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


@st.composite
def mutated(draw: st.DrawFn, bodies: st.SearchStrategy[dict], fields: list[str]) -> dict:
    """A valid body with one to three fields dropped, or replaced by any JSON value."""
    body = draw(bodies)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*fields, "model", "stream_options", "unknown_field"]))
        if name in body and draw(st.booleans()):
            del body[name]
        else:
            body[name] = draw(json_values)
    return body


def near_valid(required: dict, optional: dict) -> st.SearchStrategy[dict]:
    rest = {k: v for k, v in optional.items() if k not in required}
    valid = with_stream_options(st.fixed_dictionaries(required, optional=rest))
    return valid | mutated(valid, sorted({*required, *optional}))


models = st.sampled_from([*MODELS, "nope"])
chat_bodies = near_valid({"model": models, "messages": CHAT["messages"]}, CHAT)
completion_bodies = near_valid({"model": models, "prompt": COMPLETION["prompt"]}, COMPLETION)
responses_bodies = near_valid({"model": models, "input": RESPONSES["input"]}, RESPONSES)
messages_bodies = near_valid({"model": models, "max_tokens": MESSAGES["max_tokens"], "messages": MESSAGES["messages"]},
                             MESSAGES)
conversation_bodies = near_valid({}, CONVERSATION)
added_bodies = near_valid(ADDED, ADDED)
feedback_bodies = near_valid({"request_id": short, "value": FEEDBACK["value"]}, FEEDBACK)
raw_bodies = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, _ = upstream_processes
    models = [model_entry("up-direct", a.api_base, tier="weak"),
              model_entry("up-litellm", a.api_base, provider="hosted_vllm", tier="strong")]
    root: Path = tmp_path_factory.mktemp("fuzz")
    # An in-process engine on a tiny random model; a short context bounds requests without max_tokens.
    models.append({"model_name": "tiny", "litellm_params": {
        "model": "pitstop-local/tiny", "model_dir": str(root / "tiny"), "tiny_model": {}, "num_blocks": 256,
        "max_model_len": 96}})
    groups = [{"name": "grp", "models": ["up-direct", "up-litellm", "tiny"]}]
    with running_gateway(gateway_config(root, models, groups, server={"max_body_bytes": 20_000})) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.http() as client:
        yield client


def post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


SERVER_ERRORS = {"server_error", "internal_error", "api_error", "overloaded_error"}


def _stream_error(sent: dict, anthropic: bool) -> str | None:
    """The kind of error a stream event reports (None: not an error): a chat chunk's `error.type`, a
    Responses `error` event's `code`, a Messages `error` event's `error.type`."""
    if anthropic:
        return sent["error"]["type"] if sent.get("type") == "error" else None
    if sent.get("type") == "error":
        return sent.get("code") or "server_error"
    return sent["error"]["type"] if isinstance(sent.get("error"), dict) else None


def check(response: httpx.Response, anthropic: bool = False) -> None:
    event(f"status {response.status_code}")  # `pytest --hypothesis-show-statistics` shows the mix
    assert response.status_code < 500, response.text[:500]
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        events = re.findall(r"^data: (.*)$", response.text, re.M)
        for data in events[:-1] if events and events[-1] == "[DONE]" else events:
            reported = _stream_error(json.loads(data), anthropic)
            assert reported not in SERVER_ERRORS, data
        return
    body = response.json()
    if response.status_code >= 400 and anthropic:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    elif response.status_code >= 400:
        assert set(body["error"]) == {"message", "type", "param", "code"}


@FUZZ
@given(body=chat_bodies)
def test_fuzz_chat_completions(http: httpx.Client, body: dict) -> None:
    check(post(http, "/v1/chat/completions", body))


@FUZZ
@given(body=completion_bodies)
def test_fuzz_completions(http: httpx.Client, body: dict) -> None:
    check(post(http, "/v1/completions", body))


@FUZZ
@given(body=responses_bodies)
@example(body={"model": "m", "input": "hi", "tools": 1.5})  # was a 500: custom tools looked for first
@example(body={"model": "m", "input": "hi", "tools": [{"type": "custom", "name": ["x"]}]})
def test_fuzz_responses(http: httpx.Client, body: dict) -> None:
    check(post(http, "/v1/responses", body))


@settings(FUZZ, max_examples=80)
@given(created=conversation_bodies, added=added_bodies, query=pages, turn=responses_bodies)
def test_fuzz_conversations(http: httpx.Client, created: dict, added: dict, query: dict, turn: dict) -> None:
    """Create a conversation, add items to it, read a page of them and serve a turn in it."""
    response = post(http, "/v1/conversations", created)
    check(response)
    if response.status_code != 200:
        return
    conversation = response.json()["id"]
    check(post(http, f"/v1/conversations/{conversation}/items", added))
    check(http.get(f"/v1/conversations/{conversation}/items", params=query))
    turn.pop("previous_response_id", None)
    check(post(http, "/v1/responses", {**turn, "conversation": conversation}))


@FUZZ
@given(body=messages_bodies)
def test_fuzz_messages(http: httpx.Client, body: dict) -> None:
    check(post(http, "/v1/messages", body), anthropic=True)


@settings(FUZZ, max_examples=100)
@given(body=feedback_bodies)
def test_fuzz_feedback(http: httpx.Client, body: dict) -> None:
    response = post(http, "/v1/feedback", body)
    check(response)
    assert response.status_code in (202, 400)


@settings(FUZZ, max_examples=60)
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages",
                             "/v1/feedback", "/v1/conversations"]), body=raw_bodies)
def test_fuzz_raw_bodies(http: httpx.Client, path: str, body: bytes) -> None:
    check(http.post(path, content=body, headers={"content-type": "application/json"}), anthropic=path == "/v1/messages")
