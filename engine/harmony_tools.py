"""Tool calls under gpt-oss's Harmony (engine/harmony.py) held by one llguidance grammar over its special tokens,
as engine/forced_tools.py and engine/held_calls.py hold them for other models. A call is one message,

    <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{arguments}<|call|>

(the prompt ends at `<|start|>assistant`; openai-harmony renders a model's call so) and `<|call|>` ends the answer:
Harmony has one call per answer, so `parallel_tool_calls` changes nothing here.

- `forced_call`: `tool_choice` "required" (or allowed_tools in mode "required") or one function by name. Any
  analysis messages, free text up to `<|end|>` each, then the call of one of the named tools, its arguments held to
  its parameters' schema. The answer comes back as `tool_calls`, its thinking as reasoning_content.
- `held_calls`: `tool_choice` "auto" with a `strict: true` tool, or allowed_tools in mode "auto". The model stays
  free: analysis and commentary messages, then either a final message up to `<|return|>` or a call; a call names
  one of the (allowed) tools and holds its arguments to the schema where the tool is strict (any JSON object where
  not). The recipient may also stand in the header's role part, as the chat template renders past calls
  (`<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>`). Headers hold only Harmony's three
  channels, so no message names another recipient (the built-in browser and python tools are not offered).

The `<|...|>` are the special tokens themselves, which free text cannot hold, so a message ends only at its end
token. A custom tool's forced raw input is not a Harmony message: it keeps forced_tools.py's grammar."""

from __future__ import annotations

import json

from engine.forced_tools import ForcedTools
from engine.structured_output import OutputConstraint

_COMPACT = {"whitespace_flexible": False}  # as every JSON the engine holds (engine/structured_output.py)
_MORE = '<|end|> <|start|> "assistant"'  # a message ended and the next one's role
_TEXT = "TEXT: /(.|\\n)*/"


def in_harmony(forced: ForcedTools | None) -> bool:
    """Is a chat with this tool_choice read as Harmony: all but a forced custom tool's raw input."""
    return forced is None or not any(name in forced.custom for name in forced.names)


def forced_call(forced: ForcedTools, tools: list[dict]) -> OutputConstraint:
    """Thinking, then the call of one of `forced.names` with schema-valid arguments."""
    lines = ["%llguidance {}", "start: analysis* <|channel|> calls_of",
             f'analysis: <|channel|> "analysis" <|message|> TEXT {_MORE}',
             *_calls([_function(tools, name) for name in forced.names], strict=True), _TEXT]
    return _grammar(lines, "tool_choice")


def held_calls(tools: list[dict], allowed: frozenset[str] | None) -> OutputConstraint | None:
    """Free messages, a call held where it is made; None where no tool is strict and none are only allowed."""
    if allowed is None and not any(tool["function"].get("strict") for tool in tools):
        return None
    functions = [tool["function"] for tool in tools if allowed is None or tool["function"]["name"] in allowed]
    lines = ["%llguidance {}", f"start: (message {_MORE})* (final | <|channel|> calls_of | role_call)",
             'message: <|channel|> ("analysis" | "commentary") <|message|> TEXT',
             'final: <|channel|> "final" <|message|> TEXT <|return|>',
             *_calls(functions, strict=False), *_role_calls(functions), _TEXT]
    return _grammar(lines, "tools")


def _function(tools: list[dict], name: str) -> dict:
    return next(tool["function"] for tool in tools if tool["function"]["name"] == name)


def _arguments(function: dict, strict: bool) -> str:
    """The arguments' JSON rule: the parameters' schema where held (every forced call, a strict tool)."""
    held = strict or function.get("strict")
    schema = (function.get("parameters") or {"type": "object"}) if held else {"type": "object"}
    return f"%json {json.dumps({**schema, 'x-guidance': _COMPACT})}"


def _calls(functions: list[dict], strict: bool) -> list[str]:
    """`calls_of`: after `<|channel|>`, a call message to one of `functions`, through its `<|call|>`."""
    rules = [f"calls_of: {' | '.join(f'call_{k}' for k in range(len(functions)))}"]
    for k, function in enumerate(functions):
        header = json.dumps(f"commentary to=functions.{function['name']} ", ensure_ascii=False)
        rules.append(f'call_{k}: {header} <|constrain|> "json" <|message|> {_arguments(function, strict)} <|call|>')
    return rules


def _role_calls(functions: list[dict]) -> list[str]:
    """`role_call`: the recipient in the role part, the channel then `commentary json` (or `<|constrain|>json`)."""
    rules = [f"role_call: {' | '.join(f'role_{k}' for k in range(len(functions)))}"]
    for k, function in enumerate(functions):
        role = json.dumps(f" to=functions.{function['name']}", ensure_ascii=False)
        rules.append(f'role_{k}: {role} <|channel|> "commentary" (" json" | " " <|constrain|> "json") <|message|> '
                     f"{_arguments(function, strict=False)} <|call|>")
    return rules


def _grammar(lines: list[str], param: str) -> OutputConstraint:
    import llguidance

    return OutputConstraint("grammar", llguidance.LLMatcher.grammar_from_lark("\n".join(lines) + "\n"), param)
