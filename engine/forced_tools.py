"""A chat's `tool_choice` that forces a tool call ("required", or one function by name), held by a grammar
as vLLM holds it: the answer must be a JSON array of calls, each `{"name": <a tool's name>, "parameters":
<an object its JSON schema accepts>}` (one call for a named function, or with parallel_tool_calls
false). The answer is then given back as OpenAI's `tool_calls`, never as text: any model, whatever
its own tool-call syntax, calls the tool it was told to."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from engine.sampling_params import InvalidRequestError
from engine.structured_output import OutputConstraint


@dataclass(frozen=True)
class ForcedTools:
    """Which tools the answer may call (one name: that function is forced) and how many calls at most."""

    names: tuple[str, ...]
    named: bool  # tool_choice named one function (OpenAI then finishes with "stop", not "tool_calls")
    max_calls: int | None

    def constraint(self, tools: list[dict]) -> OutputConstraint:
        by_name = {t["function"]["name"]: t["function"] for t in tools}
        calls = [{"type": "object", "properties": {
            "name": {"const": name},
            "parameters": by_name[name].get("parameters") or {"type": "object"}},
            "required": ["name", "parameters"], "additionalProperties": False} for name in self.names]
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
        if self.max_calls is not None:
            schema["maxItems"] = self.max_calls
        return OutputConstraint.json_schema(schema, "tool_choice")


def forced_tools(tool_choice: Any, tools: list[dict] | None, parallel_tool_calls: Any) -> ForcedTools | None:
    """None for "auto" and "none" (nothing forced); InvalidRequestError for a choice that cannot be met."""
    if tool_choice in (None, "auto", "none"):
        return None
    names = [t["function"]["name"] for t in tools or ()]
    if not names:
        raise InvalidRequestError("'tool_choice' forces a tool call, but the request has no 'tools'", "tool_choice")
    max_calls = 1 if parallel_tool_calls is False else None
    if tool_choice == "required":
        return ForcedTools(tuple(names), named=False, max_calls=max_calls)
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or tool_choice.get("type", "function") != "function":
        raise InvalidRequestError("'tool_choice' must be \"auto\", \"none\", \"required\" or "
                                  "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    if name not in names:
        raise InvalidRequestError(f"'tool_choice' names {name!r}, which is not among the request's tools",
                                  "tool_choice")
    return ForcedTools((name,), named=True, max_calls=1)


def tool_calls_of(text: str) -> list[dict] | None:
    """The answer's calls in OpenAI's shape; None when it is not a whole array of calls (cut by
    max_tokens), in which case the text goes back as content."""
    try:
        calls = json.loads(text)
    except ValueError:
        return None
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("parameters", {}), ensure_ascii=False)}}
            for c in calls]
