"""Tool calls held to their schemas when the model calls a tool on its own (`tool_choice: "auto"`), as
OpenAI promises for `strict: true` functions, in both formats engine/tool_parsers.py reads:

- `hermes`: the answer stays free text, but from the moment the model opens a call (`<tool_call>`) a
  lazy grammar holds what follows: a `{"name", "arguments"}` object naming one of the request's tools,
  whose arguments the tool's JSON schema accepts (any object for a tool that is not strict), then the
  call's end, then free text again (one call only with `parallel_tool_calls: false`). This is vLLM's
  structural tags, built on llguidance's lazy lexemes.
- `llama3_json`: an answer is text that does not open with `{`, or calls only (`{"name", "parameters"}`
  objects separated by semicolons, after `<|python_tag|>` where it is a token), each held the same way.

The same grammar keeps calls to the allowed tools where `tool_choice` is `{"type": "allowed_tools",
"allowed_tools": {"mode": "auto", ...}}` (the prompt offering them all). Only where a tool is strict or
some are allowed (a strict schema that cannot be compiled is then a 400, as OpenAI refuses one), and not
for custom tools' inputs, which sit in a JSON string."""

from __future__ import annotations

import json

from engine.structured_output import OutputConstraint
from engine.tool_parsers import CALL_END, CALL_START, PYTHON_TAG

_COMPACT = {"whitespace_flexible": False}  # as every JSON the engine holds (engine/structured_output.py)


def held_calls(tools: list[dict], parser: str | None, added_tokens: frozenset[str], parallel: bool,
               allowed: frozenset[str] | None = None,
               tags: tuple[str, str] = (CALL_START, CALL_END)) -> OutputConstraint | None:
    """The grammar for a chat offering `tools` to a model whose calls `parser` reads (only the `allowed`
    ones callable, where tool_choice is allowed_tools); None where nothing is held. `added_tokens`: the
    tokenizer's added tokens (a tag that is one is matched as that token)."""
    if parser not in ("hermes", "llama3_json") or (
            allowed is None and not any(tool["function"].get("strict") for tool in tools)):
        return None
    tools = [tool for tool in tools if allowed is None or tool["function"]["name"] in allowed]
    if parser == "hermes":
        lines = _hermes(tools, added_tokens, parallel, tags)
    else:
        lines = _llama(tools, added_tokens, parallel)
    import llguidance

    return OutputConstraint("grammar", llguidance.LLMatcher.grammar_from_lark("\n".join(lines) + "\n"), "tools")


def _calls(tools: list[dict], key: str, tail: str) -> list[str]:
    """One rule a tool: `{"name": <its name>, "<key>": <arguments>}` and `tail`; alternatives `calls_of`."""
    rules = []
    for k, tool in enumerate(tools):
        function = tool["function"]
        schema = function.get("parameters") or {"type": "object"} if function.get("strict") else {"type": "object"}
        head = '{"name": ' + json.dumps(function["name"], ensure_ascii=False) + f', "{key}": '
        rules.append(f"call_{k}: {json.dumps(head)} %json {json.dumps({**schema, 'x-guidance': _COMPACT})} "
                     f"{json.dumps('}' + tail)}")
    return [f"calls_of: {' | '.join(f'call_{k}' for k in range(len(tools)))}", *rules]


def _hermes(tools: list[dict], added_tokens: frozenset[str], parallel: bool, tags: tuple[str, str]) -> list[str]:
    """Free text; from `<tool_call>` on, a call, then `</tool_call>` and free text again."""
    start, end = (tag if tag in added_tokens else json.dumps(tag) for tag in tags)
    lines = ["%llguidance {}", f"start: call{'*' if parallel else '?'} TEXT", f'call: call_head "\\n" calls_of {end}']
    if start.startswith("<"):  # an added token: free text cannot hold it, so no ambiguity where it starts
        lines.append(f"call_head: TEXT {start}")
    else:  # a plain string: text runs lazily up to its first appearance
        lines.append(f"call_head[lazy]: TEXT {start}")
    return [*lines, *_calls(tools, "arguments", "\n"), "TEXT: /(.|\\n)*/"]


def _llama(tools: list[dict], added_tokens: frozenset[str], parallel: bool) -> list[str]:
    """Text that does not open with `{`, or calls only (after `<|python_tag|>` where it is a token),
    separated by semicolons, as engine/tool_parsers.py reads them."""
    tag = f"{PYTHON_TAG}? " if PYTHON_TAG in added_tokens else ""
    more = ' (SEP calls_of)* SEP_END' if parallel else " SEP_END"
    return ["%llguidance {}", f"start: TEXT | SPACE {tag}calls_of{more}", *_calls(tools, "parameters", ""),
            r"TEXT: /\s*([^{\s](.|\n)*)?/", r"SPACE: /\s*/", r"SEP: /[ \t\n]*;[ \t\n]*/",
            r"SEP_END: /[ \t\n;]*/"]
