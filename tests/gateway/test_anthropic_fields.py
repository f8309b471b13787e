"""gateway/anthropic_fields.py on its own: a body without Anthropic's fields is passed as it is (no copy),
one with them is copied without them and the client's body is left as it was (a retry may go to Anthropic)."""

from __future__ import annotations

import copy

from gateway.anthropic_fields import without_anthropic_fields

MARK = {"type": "ephemeral", "ttl": "1h"}


def test_a_body_without_them_is_the_same_object() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert without_anthropic_fields(body) is body


def test_every_place_is_stripped_and_the_original_kept() -> None:
    body = {"model": "m", "thinking": {"type": "enabled", "budget_tokens": 1024}, "cache_control": MARK,
            "messages": [{"role": "system", "content": [{"type": "text", "text": "s", "cache_control": MARK}]},
                         {"role": "assistant", "content": "a", "thinking_blocks": [{"type": "thinking"}],
                          "tool_calls": [{"id": "c", "type": "function", "cache_control": MARK,
                                          "function": {"name": "f", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "c", "content": "r", "cache_control": MARK}],
            "tools": [{"type": "function", "cache_control": MARK, "function": {"name": "f", "cache_control": MARK}}]}
    before = copy.deepcopy(body)
    assert without_anthropic_fields(body) == {
        "model": "m",
        "messages": [{"role": "system", "content": [{"type": "text", "text": "s"}]},
                     {"role": "assistant", "content": "a", "tool_calls": [
                         {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c", "content": "r"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert body == before
