"""A streamed answer's tool calls, written as text in one of engine/tool_parsers.py's formats, sent as
OpenAI streams them: each call's index, id, type and name as soon as the name is written, then its
arguments piece by piece, exactly as the model writes them (so the pieces join into the call's JSON), as
vLLM's tool parsers stream. Text before the calls goes out as content.

What cannot be undone: once a call's name went out, the call stands, even if what follows does not parse
(a whole answer whose calls do not parse stays text). A call written with its arguments first, or its
arguments as a JSON string, goes out whole once its object is complete."""

from __future__ import annotations

import json
import re
import uuid

from engine.tool_parsers import PARSERS, ParsedCalls, _call

_SPACE = re.compile(r"\s*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
WAIT, NO = None, -1  # `_expect` and `call_head`: not known until more text comes; not this shape


class JsonExtent:
    """Where the JSON object or array that starts at `start` ends, found as its text comes in (strings and
    escapes followed: a bracket inside a string does not count)."""

    def __init__(self, start: int) -> None:
        self._at = start
        self._depth = 0
        self._in_string = self._escaped = False
        self.end: int | None = None  # one past its closing bracket, once written

    def scan(self, text: str) -> int | None:
        at, depth, in_string, escaped = self._at, self._depth, self._in_string, self._escaped
        while at < len(text) and self.end is None:
            char = text[at]
            at += 1
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    self.end = at
        self._at, self._depth, self._in_string, self._escaped = at, depth, in_string, escaped
        return self.end


class _Undecided(Exception):
    def __init__(self, verdict: int | None) -> None:
        self.verdict = verdict  # WAIT or NO


def _expect(text: str, at: int, *options: str) -> int:
    """The index past whichever option comes next (after blanks); _Undecided(WAIT) while the text so far
    could still become one, _Undecided(NO) once it cannot."""
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
    rest = text[at:at + max(map(len, options))]
    for option in options:
        if rest.startswith(option):
            return at + len(option)
    raise _Undecided(WAIT if any(option.startswith(rest) for option in options) else NO)


def _value(text: str, at: int, first: str) -> int:
    """Where the value after blanks begins, if its first character is one of `first`."""
    at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
    if at == len(text):
        raise _Undecided(WAIT)
    if text[at] not in first:
        raise _Undecided(NO)
    return at


def call_head(text: str, start: int) -> tuple[str, int] | int | None:
    """A call object written name first (`{"name": "f", "arguments": {` or `"parameters": [`): its name
    and where its arguments begin; WAIT until that much is written, NO for an object written otherwise."""
    try:
        at = _value(text, _expect(text, _expect(text, _expect(text, start, "{"), '"name"'), ":"), '"')
        name = _STRING.match(text, at)
        if name is None:
            return WAIT
        at = _value(text, _expect(text, _expect(text, _expect(text, name.end(), ","), '"arguments"', '"parameters"'),
                                  ":"), "{[")
        return json.loads(name.group()), at
    except _Undecided as undecided:
        return undecided.verdict
    except ValueError:  # a name that is not a JSON string
        return NO


class _Call:
    """One call being written, from its object's first character."""

    def __init__(self, start: int, index: int) -> None:
        self.start = start
        self.index = index
        self.id = f"call_{uuid.uuid4().hex[:24]}"
        self.object = JsonExtent(start)
        self.arguments: JsonExtent | None = None
        self.arguments_sent = 0  # index in the text up to which the arguments went out
        self.named = False  # its head went out
        self.whole = False  # not written name first: goes out whole once complete

    def feed(self, text: str) -> list[dict]:
        deltas = []
        if not self.named and not self.whole:
            head = call_head(text, self.start)
            if head == NO:
                self.whole = True
            elif isinstance(head, tuple):
                name, at = head
                self.named, self.arguments, self.arguments_sent = True, JsonExtent(at), at
                deltas.append({"index": self.index, "id": self.id, "type": "function",
                               "function": {"name": name, "arguments": ""}})
        end = self.object.scan(text)
        if self.arguments is not None:
            upto = self.arguments.scan(text) or len(text)
            if upto > self.arguments_sent:
                deltas.append({"index": self.index, "function": {"arguments": text[self.arguments_sent:upto]}})
                self.arguments_sent = upto
        if end is not None and self.whole:
            try:
                call = _call(json.loads(text[self.start:end]))
            except ValueError:
                call = None
            if call is not None:
                self.named = True
                deltas.append({"index": self.index, **call, "id": self.id})
        return deltas


class CallStream:
    """A streamed answer's text: `feed` returns what can go out now, as content (the text before any
    call) and tool-call deltas; `finish` the rest, once the answer ends. `max_calls`: 1 for
    `parallel_tool_calls: false` (later calls are dropped)."""

    def __init__(self, parser: str = "hermes", max_calls: int | None = None) -> None:
        self._parser = PARSERS[parser]
        self._max_calls = max_calls
        self._text = ""  # everything so far
        self._sent = 0  # how much of it went out as content
        self._held = False  # calls began: no more content goes out
        self._calls_at = 0  # where the next call is looked for
        self._current: _Call | None = None
        self._sent_calls = 0  # calls that went out (one that never parses is skipped, and not numbered)
        self.called = False  # a call's head went out

    def feed(self, delta: str) -> tuple[str, list[dict]]:
        self._text += delta
        content = ""
        if not self._held:
            end, self._held = self._parser.sendable(self._text, self._sent)
            if self._text[:end].strip():  # only blank so far: held, as a blank line before calls is no content
                content, self._sent = self._text[self._sent:end], max(self._sent, end)
            if self._held:
                self._calls_at = end
        return content, self._calls() if self._held else []

    def _calls(self) -> list[dict]:
        deltas = []
        while True:
            if self._current is None:
                if self._max_calls is not None and self._sent_calls >= self._max_calls:
                    return deltas
                start = self._parser.next_call(self._text, self._calls_at)
                if start is None:
                    return deltas
                self._current = _Call(start, self._sent_calls)
            deltas += self._current.feed(self._text)
            self.called = self.called or self._current.named
            if self._current.object.end is None:
                return deltas
            self._sent_calls += self._current.named
            self._calls_at, self._current = self._current.object.end, None

    def finish(self) -> ParsedCalls:
        """The content not yet sent and the last tool-call deltas. Where no call began, the whole text is
        parsed as a whole answer is: its calls then go out whole, or, when they do not parse, as content."""
        if self.called:
            return ParsedCalls(None, [])
        parsed = self._parser.parse(self._text)
        rest = self._text[self._sent:]
        if parsed is None:
            return ParsedCalls(rest or None)
        calls = parsed.calls[:self._max_calls] if self._max_calls is not None else parsed.calls
        self.called = bool(calls)
        return ParsedCalls((parsed.content or "")[self._sent:] or None,
                           [{"index": k, **call} for k, call in enumerate(calls)])


def streamed_calls(text: str, parser: str, max_calls: int | None = None) -> ParsedCalls:
    """What streaming `text` sends, joined: its content and each call whole (its pieces of arguments joined).
    A whole answer cut by max_tokens inside a call answers with this, the partial call as its stream sent it."""
    stream = CallStream(parser, max_calls)
    content, deltas = stream.feed(text)
    rest = stream.finish()
    calls: dict[int, dict] = {}
    for delta in deltas + rest.calls:
        index, piece = delta["index"], {k: v for k, v in delta.items() if k != "index"}
        if index not in calls:
            calls[index] = piece
        else:
            calls[index]["function"]["arguments"] += piece["function"].get("arguments", "")
    return ParsedCalls((content + (rest.content or "")) or None, list(calls.values()))
