"""Responses API input as a chat request's parts: input items as messages, tools, tool_choice and
`text.format`; a 400 naming the field for what a chat cannot carry.

A custom tool (free-text input, as Codex's `apply_patch`) is a chat custom tool, its calls custom calls:
Pitstop's engines hold its input to its grammar, and for other upstreams the gateway writes it as a
function (gateway/dispatch.py, engine/custom_tools.py)."""

from __future__ import annotations

from typing import Any

from engine.server.errors import bad_request
from gateway.compaction_items import decode
from gateway.mcp_tools import call_messages

_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")


def input_messages(items: Any, field: str = "input") -> list[dict]:
    """Responses input items (or a string) as the chat messages they stand for; a 400 naming the item
    for one a chat cannot carry. A compaction item becomes its summary and tail; the conversation is
    pruned to its latest summary once whole (gateway/responses_api.py `continued`)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad_request(f"'{field}' must be a string or a non-empty list of items", field, "invalid_type")
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{where}' must be an object", where, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in _ROLES:
                raise bad_request(f"'{where}.role' must be one of {list(_ROLES)}", f"{where}.role")
            messages.append({"role": item["role"], "content": _content(item.get("content"), f"{where}.content",
                                                                        item["role"] == "assistant")})
        elif kind in ("function_call", "custom_tool_call"):
            call_id, name = _string(item, "call_id", where), _string(item, "name", where)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": _string(
                item, "arguments", where)}} if kind == "function_call" else \
                {"id": call_id, "type": "custom", "custom": {"name": name, "input": _string(item, "input", where)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # a call after its text, or a parallel call
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            content = output if isinstance(output, str) else _content(output, f"{where}.output", True)
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": content})
        elif kind == "mcp_call":  # the call and its result, as a function's (gateway/mcp_tools.py)
            call, result = call_messages(_mcp_call(item, where))
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).extend(call["tool_calls"])
            else:
                messages.append(call)
            messages.append(result)
        elif kind in ("mcp_list_tools", "mcp_approval_request", "mcp_approval_response"):
            continue  # the gateway's: the tools it offers, calls waiting for the client, the client's answers
        elif kind == "compaction":  # gateway/compaction_items.py
            messages += decode(item.get("encrypted_content"), where).messages()
        elif kind in ("reasoning", "file_search_call"):
            continue  # nothing a chat model reads (a search's excerpts served the turn that made it)
        else:
            raise bad_request(f"'{where}.type' {kind!r} is not supported (message, function_call, "
                              "function_call_output, custom_tool_call, custom_tool_call_output, reasoning, "
                              "file_search_call, compaction, mcp_list_tools, mcp_call, mcp_approval_request, "
                              "mcp_approval_response)",
                              f"{where}.type", "unsupported")
    return messages


def _mcp_call(item: dict, where: str) -> dict:
    for name in ("id", "name", "arguments"):
        _string(item, name, where)
    return item


def _string(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise bad_request(f"'{where}.{name}' must be a string", f"{where}.{name}", "invalid_type")
    return value


def _content(content: Any, where: str, as_text: bool) -> str | list[dict]:
    """A message's content as a chat's: a string, or text and image parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or a list of parts", where, "invalid_type")
    parts: list[dict] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str) and not as_text:
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"],
                                                             "detail": part.get("detail") or "auto"}})
        else:
            raise bad_request(f"'{where}[{i}]' must be an input_text or input_image part", f"{where}[{i}]",
                              "unsupported")
    return "".join(p["text"] for p in parts) if as_text else parts


def chat_tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools", "invalid_type")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in ("function", "custom") \
                or not isinstance(tool.get("name"), str):
            raise bad_request(f"'tools[{i}]' must be a function or custom tool with a name, file_search or mcp "
                              "(other tools are not supported)", f"tools[{i}]", "unsupported")
        if tool["type"] == "custom":
            converted.append(_custom_tool(tool, f"tools[{i}]"))
            continue
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def _custom_tool(tool: dict, where: str) -> dict:
    """A Responses custom tool as a chat one (engine/custom_tools.py writes it as a function for upstreams
    that have no custom tools)."""
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(f"'{where}.description' must be a string", f"{where}.description", "invalid_type")
    fmt = tool.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "grammar":
        syntax, definition = fmt.get("syntax"), fmt.get("definition")
        if syntax not in ("lark", "regex") or not isinstance(definition, str) or not definition:
            raise bad_request(f"'{where}.format' must name a lark or regex grammar with its definition",
                              f"{where}.format", "invalid_value")
        fmt = {"type": "grammar", "grammar": {"syntax": syntax, "definition": definition}}
    elif kind != "text":
        raise bad_request(f"'{where}.format.type' must be text or grammar", f"{where}.format", "invalid_value")
    return {"type": "custom", "custom": {"name": tool["name"], **({"description": description} if description else {}),
                                        "format": fmt}}


def chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools" and isinstance(choice.get("tools"), list):
        tools = [{"type": t["type"], t["type"]: {"name": t["name"]}} if isinstance(t, dict)
                 and t.get("type") in ("function", "custom") and isinstance(t.get("name"), str) else t
                 for t in choice["tools"]]  # the chat's checks name anything else
        return {"type": "allowed_tools", "allowed_tools": {"mode": choice.get("mode"), "tools": tools}}
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom") and isinstance(choice.get("name"),
                                                                                               str):
        return {"type": choice["type"], choice["type"]: {"name": choice["name"]}}
    raise bad_request("'tool_choice' must be auto, none, required, allowed_tools or a function or custom tool by "
                      "name", "tool_choice", "unsupported")


def chat_response_format(text: Any) -> dict | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request("'text.format' must be text, json_object or json_schema (with a schema)", "text.format",
                      "unsupported")
