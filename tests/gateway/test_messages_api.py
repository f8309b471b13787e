"""Anthropic Messages <-> chat conversion without HTTP (gateway/messages_api.py): the shapes the SDK
tests do not reach (images in tool results, errors, thinking blocks, cached usage, Claude Code's ids)."""

from __future__ import annotations

import json

import pytest

from engine.server.errors import APIError
from gateway.messages_api import chat_request, claude_code_session, message, usage

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}


def test_a_tool_result_with_an_image_and_an_error_and_thinking_blocks() -> None:
    chat = chat_request({
        "model": "m", "max_tokens": 9,
        "system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}],
        "messages": [
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "text", "text": "reading"},
                                              {"type": "tool_use", "id": "t1", "name": "read", "input": {"p": "x.png"}},
                                              {"type": "tool_use", "id": "t2", "name": "run", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "an image:"}, IMAGE]},
                {"type": "tool_result", "tool_use_id": "t2", "content": "exit 1", "is_error": True}]}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert chat["messages"] == [  # the breakpoint stays on its block; the thinking goes back with its signature
        {"role": "system", "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                                       {"type": "text", "text": "b"}]},
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": "reading", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "read", "arguments": json.dumps({"p": "x.png"})}},
            {"id": "t2", "type": "function", "function": {"name": "run", "arguments": "{}"}}],
         "thinking_blocks": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
        {"role": "tool", "tool_call_id": "t1", "content": "an image:"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: exit 1"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]}]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": "x"}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
     "messages[0].content[0].tool_use_id"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": 1}]}]},
     "messages[0].content[0]"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, "messages[0].content[0].source"),
    ({"model": "m", "max_tokens": 5, "system": 5, "messages": [{"role": "user", "content": "x"}]}, "system"),
    ({"model": "m", "max_tokens": 5, "stop_sequences": "END", "messages": [{"role": "user", "content": "x"}]},
     "stop_sequences"),
    ({"model": "m", "max_tokens": 5, "thinking": {"type": "enabled"}, "messages": [{"role": "user", "content": "x"}]},
     "thinking"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "t", "signature": 5}]}]}, "messages[0].content[0]"),
])
def test_what_cannot_be_a_chat_is_a_400_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(APIError) as refused:
        chat_request(body)
    assert refused.value.status == 400 and refused.value.param == param


def test_an_answer_becomes_a_message_with_anthropics_usage_and_stop_reason() -> None:
    answer = {"model": "m", "choices": [{"finish_reason": "length", "message": {
        "content": "partial", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "not json"}}]}}],
              "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 64}}}
    built = message("req-abc", answer, "fallback")
    assert built["id"] == "msg_abc" and built["stop_reason"] == "max_tokens"
    assert built["content"] == [{"type": "text", "text": "partial"},
                                {"type": "tool_use", "id": "c1", "name": "f", "input": {}}]
    assert built["usage"] == {"input_tokens": 36, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 64,
                              "output_tokens": 7, "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                                                     "ephemeral_1h_input_tokens": 0}}
    assert usage(None)["input_tokens"] == 0


@pytest.mark.parametrize("user_id, header, session", [
    ("user_" + "a" * 64 + "_account__session_0b8f2c1e-1111-2222-3333-444455556666", None,
     "0b8f2c1e-1111-2222-3333-444455556666"),
    ('{"device_id": "d", "account_uuid": "", "session_id": "s-1"}', None, "s-1"),
    ('{"device_id": "d"}', None, None),
    ("{not json", None, None),
    ("alice", None, None),
    (None, "h-1", "h-1"),
    ("alice", "h-2", "h-2"),
])
def test_claude_codes_session(user_id: str | None, header: str | None, session: str | None) -> None:
    assert claude_code_session(user_id, header) == session


def test_structured_outputs_become_a_response_format() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    chat = chat_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                         "output_format": {"type": "json_schema", "schema": schema},
                         "output_config": {"effort": "low"}})
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    with pytest.raises(APIError) as refused:
        chat_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                      "output_format": {"type": "xml"}})
    assert refused.value.param == "output_format"
