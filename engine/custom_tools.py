"""OpenAI's custom tools in Chat Completions: a tool whose input is free text rather than JSON arguments
(Codex's `apply_patch`), optionally held to a Lark or regex grammar:

    {"type": "custom", "custom": {"name": "apply_patch", "description": "...",
                                  "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": "..."}}}}

and its calls, `{"id", "type": "custom", "custom": {"name", "input"}}`.

Chat templates and most upstreams know only functions, so a custom tool is also written as one: a
function with one string parameter, `input`, its grammar described to the model (`function_body`). A call
of that function is the custom call (`custom_call`): `CustomCalls` turns a model's or an upstream's
function calls back into custom ones, whole answers and streamed chunks alike. Where Pitstop's engine
is told to call a custom tool (`tool_choice`), the grammar itself holds the answer (engine/forced_tools.py)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from engine.server.errors import bad_request

INPUT = "input"  # the one argument of a custom tool written as a function
Syntax = Literal["text", "lark", "regex"]


@dataclass(frozen=True)
class CustomTool:
    name: str
    description: str | None
    syntax: Syntax  # "text": any input
    definition: str = ""  # the grammar, for lark and regex

    def as_function(self) -> dict:
        parts = [self.description] if self.description else []
        if self.syntax != "text":
            parts.append(f"The input must match this {self.syntax} grammar:\n{self.definition}")
        parameters = {"type": "object", "properties": {INPUT: {"type": "string", "description": "the tool's input"}},
                      "required": [INPUT], "additionalProperties": False}
        return {"type": "function", "function": {"name": self.name, **({"description": "\n\n".join(parts)} if parts
                                                                       else {}), "parameters": parameters}}


def custom_tool(tool: dict, where: str) -> CustomTool:
    """A chat tool `{"type": "custom", "custom": {...}}` checked; a 400 naming what is wrong."""
    spec = tool.get("custom")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise bad_request(f"'{where}' must be {{\"type\": \"custom\", \"custom\": {{\"name\", ...}}}}", where,
                          "invalid_type")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(f"'{where}.custom.description' must be a string", f"{where}.custom.description",
                          "invalid_type")
    fmt = spec.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return CustomTool(spec["name"], description, "text")
    grammar = fmt.get("grammar") if kind == "grammar" else None
    if not isinstance(grammar, dict) or grammar.get("syntax") not in ("lark", "regex") \
            or not isinstance(grammar.get("definition"), str) or not grammar["definition"]:
        raise bad_request(f"'{where}.custom.format' must be {{\"type\": \"text\"}} or {{\"type\": \"grammar\", "
                          "\"grammar\": {\"syntax\": \"lark\" | \"regex\", \"definition\": ...}}",
                          f"{where}.custom.format", "invalid_value")
    return CustomTool(spec["name"], description, grammar["syntax"], grammar["definition"])


def custom_tools(tools: Any) -> dict[str, CustomTool]:
    """The chat request's custom tools by name (checked); {} when it has none."""
    if not isinstance(tools, list):
        return {}
    return {(tool := custom_tool(t, f"tools[{i}]")).name: tool
            for i, t in enumerate(tools) if isinstance(t, dict) and t.get("type") == "custom"}


def function_body(body: dict, tools: dict[str, CustomTool]) -> dict:
    """The chat with its custom tools written as functions: the tools, a `tool_choice` naming one, and the
    custom calls in its assistant messages (their input as the function's arguments)."""
    if not tools and not has_custom_calls(body):
        return body
    out = dict(body)
    if tools:
        out["tools"] = [tools[t["custom"]["name"]].as_function() if t.get("type") == "custom" else t
                        for t in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "custom":
        name = (choice.get("custom") or {}).get("name") if isinstance(choice.get("custom"), dict) else None
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    if isinstance(body.get("messages"), list):
        out["messages"] = [_functions_in(m) for m in body["messages"]]
    return out


def as_function_chat(body: dict) -> tuple[dict, CustomCalls | None]:
    """The chat for an upstream without custom tools, and what turns its answer's calls back into custom
    calls (None: the chat names no custom tool)."""
    custom = custom_tools(body.get("tools"))
    return function_body(body, custom), CustomCalls(frozenset(custom)) if custom else None


def has_custom_calls(body: dict) -> bool:
    """Does any message carry a custom call (a chat that names no custom tool may still replay one)?"""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    for message in messages:  # every chat to an upstream without custom tools pays this: plain loops
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls and isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict) and call.get("type") == "custom":
                    return True
    return False


def _functions_in(message: Any) -> Any:
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list) or not any(isinstance(c, dict) and c.get("type") == "custom" for c in calls):
        return message
    return {**message, "tool_calls": [_as_function_call(c) if isinstance(c, dict) and c.get("type") == "custom"
                                      else c for c in calls]}


def _as_function_call(call: dict) -> dict:
    spec = call.get("custom")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("input"), str):
        return call  # checked (a 400) where the message is read
    return {"id": call.get("id"), "type": "function",
            "function": {"name": spec["name"], "arguments": json.dumps({INPUT: spec["input"]}, ensure_ascii=False)}}


def custom_input(arguments: str) -> str:
    """A custom tool's input from its function call's arguments (`{"input": ...}`; anything else whole)."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return arguments
    value = parsed.get(INPUT) if isinstance(parsed, dict) and len(parsed) == 1 else None
    return value if isinstance(value, str) else arguments


def custom_call(name: str, text: str, call_id: str | None = None) -> dict:
    return {"id": call_id or f"call_{uuid.uuid4().hex[:24]}", "type": "custom", "custom": {"name": name, "input": text}}


def custom_calls_of(calls: list[dict], names: frozenset[str]) -> list[dict]:
    """The calls, those of the `names` custom tools written as function calls turned into custom calls."""
    out = []
    for call in calls:
        function = call.get("function") if call.get("type", "function") == "function" else None
        if isinstance(function, dict) and function.get("name") in names:
            out.append(custom_call(function["name"], custom_input(function.get("arguments") or ""), call.get("id")))
        else:
            out.append(call)
    return out


class CustomCalls:
    """Function calls of the request's custom tools turned back into custom calls: in a whole answer
    (`answer`), or in a stream's chunks (`chunk`, one per chunk in order): a streamed call's arguments
    are held until its choice finishes, then its input goes out in one delta (its id and name with it)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self._held: dict[tuple[int, int], dict] = {}  # (choice, call index) -> the custom call so far
        self._arguments: dict[tuple[int, int], str] = {}

    def answer(self, answer: dict) -> dict:
        for choice in answer.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and message.get("tool_calls"):
                message["tool_calls"] = custom_calls_of(message["tool_calls"], self.names)
        return answer

    def chunk(self, chunk: dict) -> dict:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            index = choice.get("index", 0)
            if calls:
                kept = [call for call in calls if not self._hold(index, call)]
                if kept:
                    delta["tool_calls"] = kept
                else:
                    delta.pop("tool_calls")
            if choice.get("finish_reason") is not None:
                done = sorted(k for k in self._held if k[0] == index)
                if done:
                    delta = choice.setdefault("delta", {})
                    delta["tool_calls"] = (delta.get("tool_calls") or []) + [self._release(k) for k in done]
        return chunk

    def _hold(self, choice: int, call: dict) -> bool:
        key = (choice, call.get("index", 0))
        function = call.get("function") or {}
        if key not in self._held:
            if function.get("name") not in self.names:
                return False
            self._held[key] = {"index": key[1], "id": call.get("id"), "name": function["name"]}
            self._arguments[key] = ""
        self._arguments[key] += function.get("arguments") or ""
        return True

    def _release(self, key: tuple[int, int]) -> dict:
        held = self._held.pop(key)
        text = custom_input(self._arguments.pop(key))
        return {"index": held["index"], **custom_call(held["name"], text, held["id"])}
