"""Anthropic's prompt caching and extended thinking through the gateway, over real sockets: a litellm
`anthropic/claude-...` deployment whose `api_base` is a mock of Anthropic's API (tests/gateway/anthropic_upstream.py)
gets the `cache_control` breakpoints, `thinking` and the thinking blocks sent back with their signature, from
the anthropic SDK on /v1/messages and from the openai SDK on chat completions; the client gets the thinking
blocks with the signature the mock sent (whole and streamed) and the cache tokens in its usage and the
outcome row's cost. The same requests to OpenAI-compatible deployments (Pitstop's HTTP backend and litellm's
`hosted_vllm/`) arrive without any of those fields."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import pytest

from tests.engine.serving import serve_in_thread
from tests.gateway.anthropic_upstream import TEXT, THOUGHT, AnthropicUpstream
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

PRICES = {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6, "cache_read_input_token_cost": 2e-7,
          "cache_creation_input_token_cost": 2.5e-6, "cache_creation_input_token_cost_above_1hr": 4e-6}
# The mock's usage: 100 uncached, 600 read, 300 written (200 of them for an hour), 7 out.
BILLED = 100 * 2e-6 + 600 * 2e-7 + 100 * 2.5e-6 + 200 * 4e-6 + 7 * 8e-6
EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}, "cache_control": HOUR}
SYSTEM = [{"type": "text", "text": "You are terse."},
          {"type": "text", "text": "A long, stable preamble.", "cache_control": EPHEMERAL}]
ANTHROPIC_KEYS = ("cache_control", "thinking", "thinking_blocks")


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[AnthropicUpstream, str]]:
    upstream = AnthropicUpstream()
    with serve_in_thread(upstream.app()) as url:
        yield upstream, url


@pytest.fixture(scope="module")
def gw(mock: tuple[AnthropicUpstream, str], upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    claude_entry = {"model_name": "claude", "litellm_params": {
        "model": "anthropic/claude-sonnet-4-5", "api_base": mock[1], "api_key": "sk-ant-test"},
        "model_info": {**PRICES, "tier": "strong"}}
    models = [claude_entry, model_entry("up", a.api_base), model_entry("up-vllm", b.api_base, provider="hosted_vllm")]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("anthropic"), models)) as gateway:
        yield gateway


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0, timeout=30)


def first_turn(model: str, client: anthropic.Anthropic, stream: bool) -> anthropic.types.Message:
    kwargs = {"model": model, "max_tokens": 4000, "system": SYSTEM, "tools": [WEATHER, CLOCK],
              "thinking": {"type": "enabled", "budget_tokens": 2000},
              "messages": [{"role": "user", "content": [
                  {"type": "text", "text": "Weather in Paris?", "cache_control": EPHEMERAL}]}]}
    if not stream:
        return client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as events:
        seen = list(events)
        final = events.get_final_message()
    signatures = [e.delta.signature for e in seen if e.type == "content_block_delta"
                  and e.delta.type == "signature_delta"]
    assert len(signatures) == 1 and signatures == [final.content[0].signature]  # type: ignore[union-attr]
    return final


def second_turn(model: str, client: anthropic.Anthropic, first: anthropic.types.Message) -> anthropic.types.Message:
    """The tool's result sent back with the first answer's blocks, its signed thinking among them (Anthropic
    requires them while thinking with tools), the latest turn marked for the cache."""
    call = first.content[-1]
    assert call.type == "tool_use"
    return client.messages.create(
        model=model, max_tokens=4000, system=SYSTEM, tools=[WEATHER, CLOCK],
        thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": [b.model_dump() for b in first.content]},  # type: ignore[misc]
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny",
                                                "cache_control": EPHEMERAL}]}])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_thinking_tool_loop_with_cache_breakpoints_reaches_anthropic(
        gw: Gateway, mock: tuple[AnthropicUpstream, str], stream: bool) -> None:
    upstream = mock[0]
    with claude(gw) as client:
        first = first_turn("claude", client, stream)
        sent = upstream.last
        second = second_turn("claude", client, first)
        resent = upstream.last
    # The first answer: the mock's thinking, with the signature it sent, then the tool call.
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking == THOUGHT
    assert thinking.signature == f"sig-{len(upstream.bodies) - 1}"
    # What Anthropic got: the breakpoints on their blocks (system, tools, the last user turn), the settings.
    assert sent["system"] == [{"type": "text", "text": "You are terse."},
                              {"type": "text", "text": "A long, stable preamble.", "cache_control": EPHEMERAL}]
    assert [t.get("cache_control") for t in sent["tools"]] == [None, HOUR]  # the 1-hour ttl goes as it is
    assert sent["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    # The second turn sends the signed thinking back before the tool call, and marks the tool result.
    assistant = resent["messages"][1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": THOUGHT, "signature": thinking.signature}
    assert assistant[-1]["type"] == "tool_use" and assistant[-1]["id"] == "toolu_mock1"
    result = resent["messages"][2]["content"][0]
    assert result["type"] == "tool_result" and result["cache_control"] == EPHEMERAL
    assert second.content[-1].type == "text" and second.content[-1].text == TEXT  # type: ignore[union-attr]
    assert second.content[0].signature == f"sig-{len(upstream.bodies)}"  # type: ignore[union-attr]
    # The cache tokens as Anthropic reports them, and priced: reads, 5-minute and 1-hour writes.
    usage = second.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 600, 300)
    assert usage.cache_creation is not None and usage.cache_creation.ephemeral_1h_input_tokens == 200
    assert first.usage.cache_creation_input_tokens == 300 and first.usage.cache_read_input_tokens == 600
    row = gw.row(second._request_id or "")
    assert row["model"] == "claude" and row["cost_usd"] == pytest.approx(BILLED, rel=1e-9)
    assert row["extra"]["cache_creation_tokens"] == 300 and row["cached_tokens"] == 600


def test_chat_completions_cache_control_parts_and_thinking_reach_anthropic(
        gw: Gateway, mock: tuple[AnthropicUpstream, str]) -> None:
    with gw.openai() as client:
        answer = client.chat.completions.create(
            model="claude", max_tokens=4000, extra_body={"thinking": {"type": "enabled", "budget_tokens": 1500}},
            messages=[{"role": "system", "content": [{"type": "text", "text": "stable", "cache_control": HOUR}]},
                      {"role": "user", "content": [{"type": "text", "text": "2+2?",  # type: ignore[typeddict-unknown-key]
                                                    "cache_control": EPHEMERAL}]}])
    sent = mock[0].last
    assert sent["system"] == [{"type": "text", "text": "stable", "cache_control": HOUR}]
    assert sent["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1500}
    message = answer.choices[0].message
    assert message.content == TEXT
    assert (message.model_extra or {})["thinking_blocks"][0]["signature"] == f"sig-{len(mock[0].bodies)}"


def _keys(value: object) -> set[str]:
    """Every key anywhere in a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


@pytest.mark.parametrize("model", ["up", "up-vllm"])
def test_other_deployments_get_none_of_anthropics_fields(
        gw: Gateway, upstreams: tuple[UpstreamProcess, UpstreamProcess], model: str) -> None:
    served_by = upstreams[0] if model == "up" else upstreams[1]
    signed = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hm", "signature": "sig-x"}, {"type": "text", "text": "ok",
                                                                       "cache_control": EPHEMERAL},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}, "cache_control": EPHEMERAL}]}
    with claude(gw) as client:
        answer = client.messages.create(
            model=model, max_tokens=50, system=SYSTEM, tools=[WEATHER, CLOCK], tool_choice={"type": "none"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "hi"}, signed,  # type: ignore[list-item]
                      {"role": "user", "content": [
                          {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x", "cache_control": EPHEMERAL},
                          {"type": "text", "text": "and now?", "cache_control": EPHEMERAL}]}])
    assert answer.content[0].type == "text"
    messages_body = served_by.stats()["bodies"][-1]
    with gw.openai() as openai_client:
        openai_client.chat.completions.create(
            model=model, max_tokens=20, extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024},
                                                    "cache_control": EPHEMERAL},
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}},  # type: ignore[typeddict-unknown-key]
                    "cache_control": EPHEMERAL}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi",  # type: ignore[typeddict-unknown-key]
                                                    "cache_control": EPHEMERAL}]}])
    chat_body = served_by.stats()["bodies"][-1]
    for body in (messages_body, chat_body):
        assert not _keys(body) & set(ANTHROPIC_KEYS), json.dumps(body)
    # What the fields were on is still there, in the breakpoints' place.
    assert [p["text"] for p in messages_body["messages"][0]["content"]] == ["You are terse.", "A long, stable preamble."]
    assert chat_body["messages"][0]["content"] == [{"type": "text", "text": "hi"}]
    assert chat_body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {}}}]
