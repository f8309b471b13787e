"""A chat's `tool_choice` that forces a tool call ("required", or one function by name), held by a grammar
as vLLM holds it: the answer must be a JSON array of calls, each `{"name": <a tool's name>, "parameters":
<an object its JSON schema accepts>}` (one call for a named function, or with parallel_tool_calls
false). The answer is then given back as OpenAI's `tool_calls`, never as text: any model, whatever
its own tool-call syntax, calls the tool it was told to. A custom tool's call is its raw input instead,
held by the tool's grammar (engine/custom_tools.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.custom_tools import CustomTool, custom_call
from engine.sampling_params import InvalidRequestError
from engine.structured_output import OutputConstraint


@dataclass(frozen=True)
class ForcedTools:
    """Which tools the answer may call (one name: that function is forced) and how many calls at most."""

    names: tuple[str, ...]
    named: bool  # tool_choice named one function (OpenAI then finishes with "stop", not "tool_calls")
    max_calls: int | None
    custom: Mapping[str, CustomTool] = field(default_factory=dict)  # the request's custom tools

    def constraint(self, tools: list[dict]) -> OutputConstraint:
        """A JSON array of function calls; a custom tool's call is its raw input, held by its grammar (after
        its name and a newline where the answer may also call another tool): a model writes a patch as a
        patch, not escaped into a JSON string."""
        functions = [name for name in self.names if name not in self.custom]
        customs = [self.custom[name] for name in self.names if name in self.custom]
        if self.named and customs:
            return _input_grammar(customs[0])
        options = [(f"{tool.name}\n", _input_grammar(tool)) for tool in customs]
        if functions:
            calls = self._function_calls(functions, tools)
            if not customs:
                return calls
            options.insert(0, ("", calls))
        return OutputConstraint.alternatives(options, "tool_choice")

    def _function_calls(self, names: list[str], tools: list[dict]) -> OutputConstraint:
        by_name = {t["function"]["name"]: t["function"] for t in tools}
        calls = [{"type": "object", "properties": {
            "name": {"const": name},
            "parameters": by_name[name].get("parameters") or {"type": "object"}},
            "required": ["name", "parameters"], "additionalProperties": False} for name in names]
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
        if self.max_calls is not None:
            schema["maxItems"] = self.max_calls
        return OutputConstraint.json_schema(schema, "tool_choice")

    def calls(self, text: str) -> list[dict] | None:
        """The whole answer's calls in OpenAI's shape (custom calls as `{"type": "custom", ...}`); None when it
        is not whole (cut by max_tokens), in which case the text goes back as content."""
        if self.named and self.names[0] in self.custom:
            return [custom_call(self.names[0], text)]
        if self.custom and not text.startswith("["):
            name, newline, rest = text.partition("\n")
            return [custom_call(name, rest)] if newline and name in self.custom else None
        return tool_calls_of(text)


def _input_grammar(tool: CustomTool) -> OutputConstraint:
    if tool.syntax == "regex":
        return OutputConstraint.regex(tool.definition, "tools")
    return OutputConstraint.grammar(tool.definition if tool.syntax == "lark" else "start: /(.|\\n)*/", "tools")


def forced_tools(tool_choice: Any, tools: list[dict] | None, parallel_tool_calls: Any,
                 custom: Mapping[str, CustomTool] | None = None) -> ForcedTools | None:
    """None for "auto" and "none" (nothing forced); InvalidRequestError for a choice that cannot be met.
    `tools` are functions (custom tools written as functions: engine/custom_tools.py), `custom` those
    that are custom tools."""
    if tool_choice in (None, "auto", "none"):
        return None
    names = [t["function"]["name"] for t in tools or ()]
    if not names:
        raise InvalidRequestError("'tool_choice' needs the request's 'tools'", "tool_choice")
    max_calls = 1 if parallel_tool_calls is False else None
    if tool_choice == "required":
        return ForcedTools(tuple(names), named=False, max_calls=max_calls, custom=custom or {})
    allowed = allowed_tools(tool_choice, tools)
    if allowed is not None:  # "required" among the allowed ones; "auto" is held where calls are parsed
        mode, chosen = allowed
        return ForcedTools(chosen, named=False, max_calls=max_calls, custom=custom or {}) if mode == "required" \
            else None
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or tool_choice.get("type", "function") != "function":
        raise InvalidRequestError("'tool_choice' must be \"auto\", \"none\", \"required\" or "
                                  "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    if name not in names:
        raise InvalidRequestError(f"'tool_choice' names {name!r}, which is not among the request's tools",
                                  "tool_choice")
    return ForcedTools((name,), named=True, max_calls=1, custom=custom or {})


def allowed_tools(tool_choice: Any, tools: list[dict] | None) -> tuple[str, tuple[str, ...]] | None:
    """OpenAI's `{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools": [...]}}`:
    its mode and the names of the tools it allows (all among the request's: the prompt keeps offering
    every tool, so a cached prefix stays the same whichever are allowed); None for any other tool_choice."""
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "allowed_tools":
        return None
    spec = tool_choice.get("allowed_tools")
    mode = spec.get("mode") if isinstance(spec, dict) else None
    listed = spec.get("tools") if isinstance(spec, dict) else None
    if mode not in ("auto", "required") or not isinstance(listed, list) or not listed:
        raise InvalidRequestError("'tool_choice' must be {\"type\": \"allowed_tools\", \"allowed_tools\": {\"mode\": "
                                  "\"auto\" | \"required\", \"tools\": [...]}} with at least one tool", "tool_choice")
    offered, names = {t["function"]["name"] for t in tools or ()}, []
    for tool in listed:
        kind = tool.get("type") if isinstance(tool, dict) else None
        named = tool.get(kind) if kind in ("function", "custom") else None
        name = named.get("name") if isinstance(named, dict) else None
        if name not in offered:
            raise InvalidRequestError(f"'tool_choice.allowed_tools.tools' allows {name!r}, which is not among the "
                                      "request's tools", "tool_choice")
        names.append(name)
    return mode, tuple(dict.fromkeys(names))


def offering_only_allowed(body: dict) -> dict:
    """The chat for an upstream that has no `allowed_tools`: only the allowed tools offered, and its mode as
    the tool_choice (the prompt then differs with the allowed set, but the same calls can be made)."""
    tool_choice = body.get("tool_choice")
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    as_functions = [t if t.get("type") != "custom" else {"function": t.get("custom")} for t in tools
                    if isinstance(t, dict) and isinstance(t.get("function") or t.get("custom"), dict)]
    allowed = allowed_tools(tool_choice, as_functions)
    if allowed is None:
        return body
    mode, names = allowed
    kept = [t for t in tools if (t.get("function") or t.get("custom") or {}).get("name") in names]
    return {**body, "tools": kept, "tool_choice": mode}


def tool_calls_of(text: str) -> list[dict] | None:
    """A JSON array of function calls in OpenAI's shape; None when it is not whole."""
    try:
        calls = json.loads(text)
    except ValueError:
        return None
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("parameters", {}), ensure_ascii=False)}}
            for c in calls]
