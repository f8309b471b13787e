"""Tool calls held to their schemas when the model calls a tool on its own (`tool_choice: "auto"`), as
OpenAI promises for `strict: true` functions. The answer stays free text, but from the moment the model
opens a call (Hermes' `<tool_call>`) a lazy grammar holds what follows: a `{"name", "arguments"}` object
naming one of the request's tools, whose arguments the tool's JSON schema accepts (any object for a tool
that is not strict), then the call's end, then free text again (one call only with
`parallel_tool_calls: false`). This is vLLM's structural tags, built on llguidance's lazy lexemes.

The same grammar keeps calls to the allowed tools where `tool_choice` is `{"type": "allowed_tools", "allowed_tools":
{"mode": "auto", ...}}` (the prompt offering them all). Only where a tool is strict or some are allowed
(a strict schema that cannot be compiled is then a 400, as OpenAI refuses one),
only for the `hermes` format (a Llama answer is calls or text from its first character, with no tag to
wake a grammar on), and not for custom tools' inputs, which sit in a JSON string."""

from __future__ import annotations

import json

from engine.structured_output import OutputConstraint
from engine.tool_parsers import CALL_END, CALL_START

_COMPACT = {"whitespace_flexible": False}  # as every JSON the engine holds (engine/structured_output.py)


def held_calls(tools: list[dict], parser: str | None, added_tokens: frozenset[str], parallel: bool,
               allowed: frozenset[str] | None = None,
               tags: tuple[str, str] = (CALL_START, CALL_END)) -> OutputConstraint | None:
    """The grammar for a chat offering `tools` to a model whose calls `parser` reads (only the `allowed`
    ones callable, where tool_choice is allowed_tools); None where nothing is held. `added_tokens`: the
    tokenizer's added tokens (a tag that is one is matched as that token)."""
    if parser != "hermes" or (allowed is None and not any(tool["function"].get("strict") for tool in tools)):
        return None
    tools = [tool for tool in tools if allowed is None or tool["function"]["name"] in allowed]
    options = []
    for k, tool in enumerate(tools):
        function = tool["function"]
        schema = function.get("parameters") or {"type": "object"} if function.get("strict") else {"type": "object"}
        head = '\n{"name": ' + json.dumps(function["name"], ensure_ascii=False) + ', "arguments": '
        options.append(f"call_{k}: {json.dumps(head)} %json {json.dumps({**schema, 'x-guidance': _COMPACT})} "
                       f'"}}\\n"')
    start, end = (tag if tag in added_tokens else json.dumps(tag) for tag in tags)
    lines = ["%llguidance {}", f"start: call{'*' if parallel else '?'} TEXT",
             f"call: call_head ({' | '.join(f'call_{k}' for k in range(len(tools)))}) {end}"]
    if start.startswith("<"):  # an added token: free text cannot hold it, so no ambiguity where it starts
        lines.append(f"call_head: TEXT {start}")
    else:  # a plain string: text runs lazily up to its first appearance
        lines.append(f"call_head[lazy]: TEXT {start}")
    lines += [*options, "TEXT: /(.|\\n)*/"]
    import llguidance

    return OutputConstraint("grammar", llguidance.LLMatcher.grammar_from_lark("\n".join(lines) + "\n"), "tools")
