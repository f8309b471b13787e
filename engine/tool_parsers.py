"""Tool calls a model writes as text, turned into OpenAI's `tool_calls` (`--tool-call-parser NAME`, as
vLLM's `--enable-auto-tool-choice --tool-call-parser NAME`), in the two formats most open models write:

- `hermes` (Qwen2.5, Qwen3, QwQ, the Hermes models): each call a JSON object in its own block, after any
  text, which is the answer's content (none when blank):

      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Oslo"}}
      </tool_call>

- `llama3_json` (Llama 3.1 to 3.3): the whole answer is the calls, JSON objects with `parameters`,
  separated by semicolons (`<|python_tag|>` before them is a special token the detokenizer drops):

      {"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": ...}

An answer whose calls do not parse stays text, as vLLM leaves it. Streamed, text is sent until calls may
begin; from there each call goes out as OpenAI streams one (engine/call_stream.py): its id and name as
soon as they are written, then its arguments piece by piece as the model writes them."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from engine.detokenizer import longest_partial_suffix

CALL_START, CALL_END = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
_SPACE = re.compile(r"\s*")
_BLOCK = re.compile(re.escape(CALL_START) + r"(.*?)(?:" + re.escape(CALL_END) + r"|$)", re.DOTALL)


@dataclass
class ParsedCalls:
    content: str | None  # the text before the calls (None when there is none)
    calls: list[dict] = field(default_factory=list)  # OpenAI tool calls: id, type, function (name, arguments)


class ToolCallParser(Protocol):
    def parse(self, text: str) -> ParsedCalls | None:
        """The calls in a whole answer; None when it makes none (or any that does not parse)."""

    def sendable(self, text: str, sent: int) -> tuple[int, bool]:
        """How much of the text so far can go out as content (an index not before `sent`), and whether
        calls have begun (nothing more goes out then)."""

    def next_call(self, text: str, at: int) -> int | None:
        """Where the next call's JSON object may start, from `at` (None: not written yet)."""


def _call(body: object) -> dict | None:
    """One call's JSON as an OpenAI tool call (`arguments`, or Llama's `parameters`); None if it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        return None
    arguments = body.get("arguments", body.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": body["name"], "arguments": arguments if isinstance(arguments, str)
                         else json.dumps(arguments, ensure_ascii=False)}}


class HermesParser:
    def parse(self, text: str) -> ParsedCalls | None:
        start = text.find(CALL_START)
        if start < 0:
            return None
        calls = []
        for body in _BLOCK.findall(text[start:]):
            try:
                call = _call(json.loads(body))
            except ValueError:
                return None
            if call is None:
                return None
            calls.append(call)
        return ParsedCalls(text[:start] if text[:start].strip() else None, calls)

    def sendable(self, text: str, sent: int) -> tuple[int, bool]:
        start = text.find(CALL_START, sent)
        if start >= 0:
            return start, True
        return len(text) - longest_partial_suffix(text[sent:], (CALL_START,)), False

    def next_call(self, text: str, at: int) -> int | None:
        """Where the next call's JSON object starts, from `at` (None until a block has begun)."""
        start = text.find(CALL_START, at)
        return None if start < 0 else start + len(CALL_START)


class Llama3JsonParser:
    _decoder = json.JSONDecoder()

    def parse(self, text: str) -> ParsedCalls | None:
        body = text.strip().removeprefix(PYTHON_TAG).strip()
        if not body.startswith("{"):
            return None
        calls, at = [], 0
        while at < len(body):
            try:
                value, at = self._decoder.raw_decode(body, at)
            except ValueError:
                return None
            call = _call(value)
            if call is None:
                return None
            calls.append(call)
            while at < len(body) and body[at] in "; \n\t":
                at += 1
        return ParsedCalls(None, calls)

    def sendable(self, text: str, sent: int) -> tuple[int, bool]:
        if sent:  # text went out: the answer did not start with a call, so it makes none
            return len(text), False
        head = text.lstrip()
        if head.startswith(("{", PYTHON_TAG)):
            return 0, True
        if not head or PYTHON_TAG.startswith(head):
            return 0, False  # not known yet
        return len(text), False

    def next_call(self, text: str, at: int) -> int | None:
        """Where the next call's JSON object starts, from `at`: past the python tag and the separators."""
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text.startswith(PYTHON_TAG, at):
            at += len(PYTHON_TAG)
        elif PYTHON_TAG.startswith(text[at:]):
            return None
        while at < len(text) and text[at] in "; \n\t":
            at += 1
        return at if at < len(text) else None


# "openai": gpt-oss's Harmony calls, read from its tokens into the hermes format (engine/harmony.py).
PARSERS: dict[str, ToolCallParser] = {"hermes": HermesParser(), "llama3_json": Llama3JsonParser(),
                                      "openai": HermesParser()}


def parse_calls(text: str, parser: str = "hermes") -> ParsedCalls | None:
    return PARSERS[parser].parse(text)
