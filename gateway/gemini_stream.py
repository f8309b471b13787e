"""A chat stream as Gemini's `streamGenerateContent`: with `alt=sse` (as the `google-genai` SDK asks) one
`data:` event per GenerateContentResponse chunk, else the chunks as one JSON array, as Google's REST sends
them. Text (and thought parts, where asked) goes as it comes, one chunk per chat chunk that carries some;
a function call goes whole, in the last chunk, as Gemini sends calls; the last chunk has each candidate's
finish reason and the usageMetadata. An error after the stream started is one last `{"error": ...}`
chunk, which the SDK raises. `GeminiTurn` is the gateway/dialects.py Dialect of one generateContent call."""

from __future__ import annotations

from collections.abc import Iterator

from engine.server.errors import APIError
from engine.server.json_out import json_bytes
from gateway.backends.answers import reasoning_of
from gateway.gemini_answer import (
    error_body,
    finish_reason,
    function_call,
    generate_content_response,
    response_id,
    usage_metadata,
)
from gateway.gemini_request import chat_request
from gateway.request_body import ProxyRequest


class GeminiStream:
    """Chat chunks in, GenerateContentResponse chunks out (the same steps as gateway/messages_stream.py)."""

    keep = None  # nothing is stored
    end = None  # nor held
    follow_up = None  # no tool loop

    def __init__(self, request_id: str, model: str, thoughts: bool, sse: bool) -> None:
        self.id = response_id(request_id)
        self.model = model
        self.thoughts = thoughts
        self.sse = sse
        self.finishes: dict[int, str | None] = {}  # candidate index -> its chat finish reason
        self.calls: dict[int, dict[int, dict]] = {}  # candidate index -> chat tool call index -> the call so far
        self.sent = 0  # chunks written (an array's commas)

    def _out(self, body: dict) -> bytes:
        if self.sse:
            return b"data: " + json_bytes(body) + b"\r\n\r\n"
        self.sent += 1
        return (b"[" if self.sent == 1 else b",\r\n") + json_bytes(body)

    def _chunk(self, candidates: list[dict]) -> dict:
        return {"candidates": candidates, "modelVersion": self.model, "responseId": self.id}

    def start(self) -> Iterator[bytes]:
        return iter(())

    def chunk(self, chunk: dict) -> Iterator[bytes]:
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            self.finishes[index] = choice.get("finish_reason") or self.finishes.get(index)
            delta = choice.get("delta") or {}
            parts = []
            if self.thoughts and (thinking := reasoning_of(delta)):
                parts.append({"text": thinking, "thought": True})
            if isinstance(delta.get("content"), str) and delta["content"]:
                parts.append({"text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                self._add_call(index, call)
            if parts:
                yield self._out(self._chunk([{"content": {"role": "model", "parts": parts}, "index": index}]))

    def _add_call(self, index: int, call: dict) -> None:
        calls = self.calls.setdefault(index, {})
        held = calls.setdefault(call.get("index", len(calls)), {"id": None, "function": {"name": "", "arguments": ""}})
        function = call.get("function") or {}
        held["id"] = held["id"] or call.get("id")
        held["function"]["name"] += function.get("name") or ""
        held["function"]["arguments"] += function.get("arguments") or ""

    def completed(self) -> Iterator[bytes]:
        return iter(())

    def final(self, chat_usage: dict | None) -> dict:
        return {"usage": usage_metadata(chat_usage)}

    def final_event(self, final: dict) -> bytes:
        candidates = []
        for index in sorted(self.finishes) or [0]:
            calls = [function_call(call) for _, call in sorted(self.calls.get(index, {}).items())]
            candidates.append({"content": {"role": "model", "parts": calls or [{"text": ""}]},
                               "finishReason": finish_reason(self.finishes.get(index)), "index": index})
        last = self._out(self._chunk(candidates) | {"usageMetadata": final["usage"]})
        return last if self.sse else last + b"]"

    def failed(self, error: APIError) -> bytes:
        if self.sse:
            return b"data: " + json_bytes(error_body(error)) + b"\r\n\r\n"
        return self._out(error_body(error)) + b"]"


class GeminiTurn:
    """One generateContent or streamGenerateContent call (a gateway/dialects.py Dialect); nothing is kept."""

    def __init__(self, raw: object, request_id: str, model: str, stream: bool, sse: bool = True) -> None:
        asked = chat_request(raw, model, stream)
        self.chat = asked.chat
        self.thoughts = asked.include_thoughts
        self.request_id = request_id
        self.sse = sse

    def adopt(self, parsed: ProxyRequest) -> None:
        pass

    async def answer(self, answer: dict, model: str) -> dict:
        return generate_content_response(self.request_id, answer, model, self.thoughts)

    def stream(self, model: str) -> GeminiStream:
        return GeminiStream(self.request_id, model, self.thoughts, self.sse)

    async def end(self) -> None:
        pass
