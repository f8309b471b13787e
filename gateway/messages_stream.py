"""A chat stream as Anthropic Messages stream events (SSE bytes): `message_start`, then one content
block at a time (thinking with its signature's delta, the text, each tool call's input as JSON deltas),
each closed when the next opens, then
`message_delta` with the stop reason and usage, and `message_stop`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from engine.server.errors import APIError
from engine.server.json_out import json_bytes
from gateway.backends.answers import reasoning_of
from gateway.messages_api import chat_request, error_body, message, message_id, stop_reason, usage
from gateway.request_body import ProxyRequest


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json_bytes(event) + b"\n\n"


class MessageStream:
    """Chat chunks in, Messages stream events out (the same steps as gateway/responses_stream.py)."""

    keep = None  # nothing is stored
    end = None  # nor held
    follow_up = None  # no tool loop

    def __init__(self, request_id: str, model: str) -> None:
        self.id = message_id(request_id)
        self.model = model
        self.index = -1  # the open block's
        self.open: str | None = None  # "text", or the chat tool call index of an open tool_use block
        self.calls: dict[int, int] = {}  # chat tool call index -> its block index
        self.finish_reason: str | None = None
        self.signed = False  # the open thinking block's signature has come

    def start(self) -> Iterator[bytes]:
        yield sse({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage(None)}})

    def chunk(self, chunk: dict) -> Iterator[bytes]:
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            delta = choice.get("delta") or {}
            if thinking := reasoning_of(delta):
                if self.open != "thinking" or self.signed:  # a signed block is whole: this is the next one
                    yield from self._open({"type": "thinking", "thinking": "", "signature": ""}, "thinking")
                yield self._delta({"type": "thinking_delta", "thinking": thinking})
            yield from self._thinking_blocks(delta.get("thinking_blocks"))
            if isinstance(delta.get("content"), str) and delta["content"]:
                if self.open != "text":
                    yield from self._open({"type": "text", "text": ""}, "text")
                yield self._delta({"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                yield from self._call(call)

    def _thinking_blocks(self, blocks: Any) -> Iterator[bytes]:
        """litellm's `thinking_blocks` on an Anthropic delta: the text came as `reasoning_content` above; what
        is left is a block's signature (its own delta, as Anthropic streams it) or a redacted block whole."""
        for block in blocks if isinstance(blocks, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                yield from self._open({"type": "redacted_thinking", "data": block["data"]}, "redacted")
            elif block.get("type") == "thinking" and isinstance(block.get("signature"), str) and block["signature"]:
                if self.open != "thinking":
                    yield from self._open({"type": "thinking", "thinking": "", "signature": ""}, "thinking")
                yield self._delta({"type": "signature_delta", "signature": block["signature"]})
                self.signed = True

    def _call(self, call: dict) -> Iterator[bytes]:
        index = call.get("index", len(self.calls))
        function = call.get("function") or {}
        if index not in self.calls:
            yield from self._open({"type": "tool_use", "id": call.get("id") or f"toolu_{self.id}_{index}",
                                   "name": function.get("name") or "", "input": {}}, str(index))
            self.calls[index] = self.index
        arguments = function.get("arguments")
        # A delta for a call whose block has closed (calls interleaved) cannot be sent: Anthropic's
        # blocks come one at a time. OpenAI-compatible servers send each call whole before the next.
        if isinstance(arguments, str) and arguments and self.open == str(index):
            yield self._delta({"type": "input_json_delta", "partial_json": arguments})

    def _open(self, block: dict, kind: str) -> Iterator[bytes]:
        yield from self._close()
        self.index += 1
        self.open = kind
        self.signed = False
        yield sse({"type": "content_block_start", "index": self.index, "content_block": block})

    def _close(self) -> Iterator[bytes]:
        if self.open is not None:
            yield sse({"type": "content_block_stop", "index": self.index})
            self.open = None

    def _delta(self, delta: dict) -> bytes:
        return sse({"type": "content_block_delta", "index": self.index, "delta": delta})

    def completed(self) -> Iterator[bytes]:
        yield from self._close()

    def final(self, chat_usage: dict | None) -> dict:
        return {"stop_reason": stop_reason(self.finish_reason or "stop", called=bool(self.calls)),
                "usage": usage(chat_usage)}

    def final_event(self, final: dict) -> bytes:
        delta: dict[str, Any] = {"type": "message_delta", "usage": final["usage"],
                                 "delta": {"stop_reason": final["stop_reason"], "stop_sequence": None}}
        return sse(delta) + sse({"type": "message_stop"})

    def failed(self, error: APIError) -> bytes:
        return sse(error_body(error))


class MessagesTurn:
    """One Messages request (a gateway/dialects.py Dialect); nothing of it is kept."""

    def __init__(self, raw: object, request_id: str, headers: Mapping[str, str]) -> None:
        self.chat = chat_request(raw, headers)
        self.request_id = request_id

    def adopt(self, parsed: ProxyRequest) -> None:
        pass

    async def answer(self, answer: dict, model: str) -> dict:
        return message(self.request_id, answer, model)

    def stream(self, model: str) -> MessageStream:
        return MessageStream(self.request_id, model)

    async def end(self) -> None:
        pass
