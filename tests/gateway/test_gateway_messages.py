"""POST /v1/messages (Anthropic's Messages API, served as a chat) over a real socket with the anthropic
SDK: text and tool use, whole and streamed, a tool result sent back, `metadata.user_id` as the agent
session, count_tokens, and errors in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [model_entry("up", a.api_base), model_entry("up-vllm", b.api_base, provider="hosted_vllm")]
    groups = [{"name": "grp", "models": ["up", "up-vllm"], "router": "tier-prior", "cost_preference": 0.0}]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("messages"), models, groups)) as gateway:
        yield gateway


def claude(gw: Gateway, api_key: str = "none") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=api_key, max_retries=0, timeout=30)


def sent(upstream: UpstreamProcess) -> dict:
    return upstream.stats()["bodies"][-1]


@pytest.mark.parametrize("model", ["up", "up-vllm", "grp"])
def test_a_text_answer_with_a_system_prompt(gw: Gateway, upstreams: tuple, model: str) -> None:
    with claude(gw) as client:
        raw = client.messages.with_raw_response.create(
            model=model, max_tokens=50, system="answer briefly", stop_sequences=["END"],
            messages=[{"role": "user", "content": "one two three"}])
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.stop_reason == "end_turn" and len(message.content) == 1
    text = message.content[0].text
    assert text.startswith("from-") and len(text.split()) == 5
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
    served_by = upstreams[0] if text.startswith("from-a") else upstreams[1]
    body = sent(served_by)
    assert body["messages"] == [{"role": "system", "content": "answer briefly"},
                                {"role": "user", "content": "one two three"}]
    assert body["max_tokens"] == 50 and body["stop"] == ["END"] and "system" not in body
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["completion"]) == ("messages", "ok", text)
    assert message._request_id == raw.headers["x-pitstop-request-id"]  # Anthropic's `request-id` header


def test_tool_use_and_its_result_round_trip(gw: Gateway, upstreams: tuple) -> None:
    with claude(gw) as client:
        asked = [{"role": "user", "content": [{"type": "text", "text": "weather in Oslo"}]}]
        first = client.messages.create(model="up", max_tokens=100, tools=[WEATHER], messages=asked)
        assert first.stop_reason == "tool_use"
        use = first.content[0]
        assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"q": "weather in Oslo"}
        assert sent(upstreams[0])["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather in a city"}}]
        second = client.messages.create(model="up", max_tokens=100, tools=[{**WEATHER, "strict": True}],  # type: ignore[list-item]
                                        tool_choice={"type": "none"},
                                        messages=[*asked, {"role": "assistant", "content": first.content},
                                                  {"role": "user", "content": [
                                                      {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                                                      {"type": "text", "text": "and tomorrow?"}]}])
    assert second.stop_reason == "end_turn" and second.content[0].text.startswith("from-a")
    body = sent(upstreams[0])
    assert body["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": use.id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(use.input)}}]},
        {"role": "tool", "tool_call_id": use.id, "content": "sunny"},
        {"role": "user", "content": "and tomorrow?"}]
    assert body["tool_choice"] == "none" and body["tools"][0]["function"]["strict"] is True  # held where it can be


def test_streamed_text_arrives_as_message_events(gw: Gateway, upstreams: tuple) -> None:
    with claude(gw) as client, client.messages.stream(model="up", max_tokens=100,
                                                      messages=[{"role": "user", "content": "[words:8] go"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert deltas == final.content[0].text and len(deltas.split()) == 8
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8 and final.usage.input_tokens > 0


def test_a_reasoning_models_thinking_comes_back_as_a_thinking_block(gw: Gateway, upstreams: tuple) -> None:
    """`reasoning_content` (vLLM's reasoning parsers) is a thinking block before the text, whole and
    streamed; sent back in the next turn, it is not sent upstream."""
    ask = [{"role": "user", "content": "[think:3] why?"}]
    with claude(gw) as client:
        whole = client.messages.create(model="up", max_tokens=100, messages=ask)
        with client.messages.stream(model="up", max_tokens=100, messages=ask) as stream:
            events = list(stream)
            final = stream.get_final_message()
        client.messages.create(model="up", max_tokens=100, messages=[
            *ask, {"role": "assistant", "content": [block.model_dump() for block in whole.content]},
            {"role": "user", "content": "more"}])
    assert [block.type for block in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == "thought1 thought2 thought3"  # type: ignore[union-attr]
    assert [e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"] \
        == ["thought1", " thought2", " thought3"]
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "thought1 thought2 thought3"  # type: ignore[union-attr]
    assert sent(upstreams[0])["messages"][1] == {"role": "assistant", "content": whole.content[1].text}  # type: ignore[union-attr]


def test_a_streamed_tool_use(gw: Gateway, upstreams: tuple) -> None:
    with claude(gw) as client, client.messages.stream(model="up", max_tokens=100, tools=[WEATHER],
                                                      messages=[{"role": "user", "content": "weather"}]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert "input_json" in [e.type for e in events]  # the SDK's event for each input_json_delta
    use = final.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"q": "weather"}
    assert final.stop_reason == "tool_use"


def test_a_stream_that_breaks_ends_with_an_error_event_and_its_row(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        response = http.post("/v1/messages", json={"model": "up", "max_tokens": 10, "stream": True,
                                                   "messages": [{"role": "user", "content": "[break:2] x"}]})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert "stream broke" in events[-1]["error"]["message"] and "message_stop" not in [e["type"] for e in events]
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["status"] == "error" and row["endpoint"] == "messages"


S1, S2, S3 = ("54c1eb09-bc4c-4d2f-98eb-6d2ab2d5e2f" + str(i) for i in range(3))  # one session each


@pytest.mark.parametrize("user_id, headers, session", [
    (f"user_{'ab' * 32}_account__session_{S1}", {}, S1),  # Claude Code before v2.1.78
    (json.dumps({"device_id": "d1", "account_uuid": "", "session_id": S2}), {}, S2),  # from v2.1.78
    ("user_x", {"x-claude-code-session-id": S3}, S3),  # from v2.1.86
    ("alice", {}, "user:alice"),  # anyone else's user id: OpenAI's `user`
])
def test_an_agents_turns_are_one_session(gw: Gateway, upstreams: tuple, user_id: str, headers: dict,
                                         session: str) -> None:
    """Claude Code names its session in a header or inside `metadata.user_id`: its turns are one session."""
    with claude(gw) as client:
        asked = [{"role": "user", "content": "weather in Oslo"}]
        first = client.messages.create(model="up", max_tokens=50, tools=[WEATHER], messages=asked,
                                       metadata={"user_id": user_id}, extra_headers=headers)
        client.messages.create(model="up", max_tokens=50, tools=[WEATHER], metadata={"user_id": user_id},
                               extra_headers=headers, messages=[
            *asked, {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[0].id, "content": "sunny"}]}])
    assert sent(upstreams[0])["user"] == user_id
    with gw.http() as http:
        found = http.get(f"/v1/sessions/{session}")
    assert found.status_code == 200 and found.json()["turns"] == 2


def test_count_tokens_estimates_the_prompt(gw: Gateway) -> None:
    with claude(gw) as client:
        short = client.messages.count_tokens(model="up", messages=[{"role": "user", "content": "hi"}])
        long = client.messages.count_tokens(model="up", system="be brief", tools=[WEATHER],
                                            messages=[{"role": "user", "content": "hi " * 400}])
    assert 0 < short.input_tokens < 5 and long.input_tokens > 300


@pytest.mark.parametrize("body, status, kind", [
    ({"model": "up", "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),  # no max_tokens
    ({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 404, "not_found_error"),
    ({"model": "up", "max_tokens": 5, "messages": []}, 400, "invalid_request_error"),
    ({"model": "up", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_request_error"),
    ({"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]}, 400,
     "invalid_request_error"),
    ({"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "invalid_request_error"),
    ({"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "x"}},
     400, "invalid_request_error"),
    ({"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "mcp_servers": []}, 400,
     "invalid_request_error"),
])
def test_bad_requests_are_errors_in_anthropics_shape(gw: Gateway, upstreams: tuple, body: dict, status: int,
                                                      kind: str) -> None:
    with gw.http() as http:
        response = http.post("/v1/messages", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == kind and error["error"]["message"]
    assert sum(u.stats()["requests"] for u in upstreams) == 0


def test_the_sdk_reads_the_errors(gw: Gateway) -> None:
    with claude(gw) as client, pytest.raises(anthropic.NotFoundError, match="nope"):
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_a_missing_key_is_an_authentication_error(tmp_path: Path, upstreams: tuple) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], auth={"require_keys": True})
    with running_gateway(raw) as gw, claude(gw, api_key="sk-pitstop-wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            client.messages.create(model="up", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert refused.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.count_tokens(model="up", messages=[{"role": "user", "content": "x"}])
