"""Remote MCP tools as a request names them, without a server: approval rules (always by default, never,
and filters by name and read-only hint), allowed tools, headers with the authorization token, the
functions the model is offered, and what a chat model reads of an `mcp_call` item."""

from __future__ import annotations

import pytest

from engine.server.errors import APIError
from gateway.mcp_tools import as_function, call_messages, mcp_servers_of, parsed_arguments
from gateway.responses_input import input_messages

READ = {"name": "forecast", "annotations": {"readOnlyHint": True}, "input_schema": {"type": "object"}}
WRITE = {"name": "add", "description": "Adds.", "input_schema": {"type": "object", "required": ["a"]}}


def server(**fields: object):  # type: ignore[no-untyped-def]
    return mcp_servers_of({"tools": [{"type": "function", "name": "f"},
                                     {"type": "mcp", "server_label": "w", "server_url": "https://x/mcp", **fields}]})[0]


@pytest.mark.parametrize(("approval", "read", "write"), [
    (None, True, True),  # OpenAI's default: every call waits
    ("always", True, True),
    ("never", False, False),
    ({"never": {"read_only": True}}, False, True),
    ({"never": {"tool_names": ["add"]}}, True, False),
    ({"always": {"tool_names": ["add"]}}, True, True),  # a tool neither filter frees still waits
])
def test_which_calls_wait_for_approval(approval: object, read: bool, write: bool) -> None:
    s = server(**({} if approval is None else {"require_approval": approval}))
    assert (s.needs_approval(READ), s.needs_approval(WRITE)) == (read, write)


def test_allowed_tools_headers_and_the_offered_function() -> None:
    s = server(allowed_tools={"read_only": True}, headers={"x-team": "blue"}, authorization="tok",
               server_description="Weather service")
    assert s.where == "tools[1]" and (s.allows(READ), s.allows(WRITE)) == (True, False)
    assert server(allowed_tools=["add"]).allows(WRITE) and not server(allowed_tools=["add"]).allows(READ)
    assert s.headers == {"x-team": "blue", "Authorization": "Bearer tok"}
    assert as_function(s, WRITE) == {"type": "function", "function": {
        "name": "add", "parameters": WRITE["input_schema"], "description": "Adds.\n\n(From w: Weather service)"}}


def test_an_mcp_call_reads_as_a_function_call_and_its_result() -> None:
    done = {"type": "mcp_call", "id": "mcp_1", "name": "add", "arguments": '{"a": 1}', "output": "2", "error": None}
    failed = {**done, "id": "mcp_2", "output": None, "error": {"type": "http_error", "code": 0, "message": "down"}}
    assert call_messages(done)[1] == {"role": "tool", "tool_call_id": "mcp_1", "content": "2"}
    messages = input_messages([{"role": "user", "content": "hi"}, done, failed,
                               {"type": "mcp_list_tools", "id": "l", "server_label": "w", "tools": []},
                               {"type": "mcp_approval_request", "id": "r", "server_label": "w", "name": "add",
                                "arguments": "{}"}])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert messages[-1]["content"] == "error: down"


def test_arguments_must_be_an_object() -> None:
    assert parsed_arguments("") == {} and parsed_arguments('{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError):
        parsed_arguments("[1]")


@pytest.mark.parametrize(("field", "value"), [("headers", {"x": 1}), ("authorization", 5),
                                              ("allowed_tools", {"names": ["a"]}), ("require_approval", [])])
def test_malformed_fields_are_400s(field: str, value: object) -> None:
    with pytest.raises(APIError) as refused:
        server(**{field: value})
    assert refused.value.status == 400 and refused.value.param.startswith(f"tools[1].{field}")  # type: ignore[union-attr]
