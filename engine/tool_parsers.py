"""Tool calls a model writes as text, turned into OpenAI's `tool_calls` (`--tool-call-parser hermes`, as
vLLM's `--enable-auto-tool-choice --tool-call-parser hermes`): the format of Qwen2.5, Qwen3, QwQ and the
Hermes models, each call a JSON object in its own block,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call>

The text before the first block is the answer's content (none when it is blank); a block that is not such an object leaves the
whole answer as text, as vLLM leaves it. Streamed, text is sent until a block may begin; from there it is
held, and the calls go out whole when the answer ends."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from engine.detokenizer import longest_partial_suffix

CALL_START, CALL_END = "<tool_call>", "</tool_call>"
PARSERS = ("hermes",)
_BLOCK = re.compile(re.escape(CALL_START) + r"(.*?)(?:" + re.escape(CALL_END) + r"|$)", re.DOTALL)


@dataclass
class ParsedCalls:
    content: str | None  # the text before the first call (None when there is none)
    calls: list[dict] = field(default_factory=list)  # OpenAI tool calls: id, type, function (name, arguments)


def parse_calls(text: str) -> ParsedCalls | None:
    """The calls in a whole answer; None when it makes none (or one that does not parse: text then)."""
    start = text.find(CALL_START)
    if start < 0:
        return None
    calls = []
    for body in _BLOCK.findall(text[start:]):
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", call.get("parameters", {}))
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"], "arguments": arguments if isinstance(arguments, str)
                                   else json.dumps(arguments, ensure_ascii=False)}})
    return ParsedCalls(text[:start] if text[:start].strip() else None, calls)  # no blank message before calls


class CallStream:
    """A streamed answer's text: `feed` returns what can go out now (text before any call); `finish`
    parses what was held and returns the rest of the content and the calls."""

    def __init__(self) -> None:
        self._text = ""  # everything so far
        self._sent = 0  # how much of it went out as content
        self._held = False  # a block began: nothing more goes out until the end

    def feed(self, delta: str) -> str:
        self._text += delta
        if self._held:
            return ""
        start = self._text.find(CALL_START, self._sent)
        if start >= 0:
            self._held = True
            end = start
        else:
            end = len(self._text) - longest_partial_suffix(self._text[self._sent:], (CALL_START,))
        if not self._text[:end].strip():
            return ""  # only blank so far: held, as a blank line before calls is no content
        out, self._sent = self._text[self._sent:end], max(self._sent, end)
        return out

    def finish(self) -> ParsedCalls:
        """The content not yet sent and the calls (none, and all the held text as content, when the
        calls do not parse)."""
        parsed = parse_calls(self._text)
        rest = self._text[self._sent:]
        if parsed is None:
            return ParsedCalls(rest or None)
        before = (parsed.content or "")[self._sent:]
        return ParsedCalls(before or None, parsed.calls)

