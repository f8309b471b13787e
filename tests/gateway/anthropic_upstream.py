"""A mock of Anthropic's API for tests: `POST /v1/messages`, whole and SSE-streamed as Anthropic streams
(`message_start`, a thinking block with its `signature_delta`, a text or tool_use block, `message_delta`,
`message_stop`), recording each request body. Serve `app()` on a real socket (tests/engine/serving.py
`serve_in_thread`) and point a litellm `anthropic/claude-...` deployment's `api_base` at it.

Its answer: when thinking is on, a thinking block (`THOUGHT`) signed `sig-<n>` (n counts requests); then a
`tool_use` of the first tool while the request offers tools and its last turn holds no tool_result, else the
text `TEXT`. Usage: `USAGE` (cache reads and writes, 1-hour writes among them)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

THOUGHT = "Let me think this through."
TEXT = "The answer is four."
USAGE = {"input_tokens": 100, "output_tokens": 7, "cache_creation_input_tokens": 300,
         "cache_read_input_tokens": 600, "cache_creation": {"ephemeral_5m_input_tokens": 100,
                                                             "ephemeral_1h_input_tokens": 200}}


class RecordedBodies:
    """The request bodies a mock got, in order, from any thread."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self._lock = threading.Lock()

    @property
    def last(self) -> dict:
        with self._lock:
            return self.bodies[-1]

    def record(self, body: dict) -> int:
        """Keeps `body`; how many there are now."""
        with self._lock:
            self.bodies.append(body)
            return len(self.bodies)


class AnthropicUpstream(RecordedBodies):

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Any:
        body = await request.json()
        signature = f"sig-{self.record(body)}"
        blocks = self._blocks(body, signature)
        stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        if body.get("stream"):
            return StreamingResponse(_events(body["model"], blocks, stop), media_type="text/event-stream")
        return JSONResponse({"id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
                             "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": USAGE})

    @staticmethod
    def _blocks(body: dict, signature: str) -> list[dict]:
        blocks: list[dict] = []
        if (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"):
            blocks.append({"type": "thinking", "thinking": THOUGHT, "signature": signature})
        last = body["messages"][-1]["content"]
        answered = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
        if body.get("tools") and not answered:
            blocks.append({"type": "tool_use", "id": "toolu_mock1", "name": body["tools"][0]["name"],
                           "input": {"city": "Paris"}})
        else:
            blocks.append({"type": "text", "text": TEXT})
        return blocks


def _sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _events(model: str, blocks: list[dict], stop: str) -> Iterator[bytes]:
    start_usage = {**USAGE, "output_tokens": 1}
    yield _sse({"type": "message_start", "message": {
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
    for index, block in enumerate(blocks):
        if block["type"] == "thinking":
            yield _sse({"type": "content_block_start", "index": index,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            for piece in (block["thinking"][:9], block["thinking"][9:]):
                yield _sse({"type": "content_block_delta", "index": index,
                            "delta": {"type": "thinking_delta", "thinking": piece}})
            yield _sse({"type": "content_block_delta", "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]}})
        elif block["type"] == "text":
            yield _sse({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            yield _sse({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]}})
        else:
            yield _sse({"type": "content_block_start", "index": index,
                        "content_block": {**block, "input": {}}})
            yield _sse({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
        yield _sse({"type": "content_block_stop", "index": index})
    yield _sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": USAGE["output_tokens"]}})
    yield _sse({"type": "message_stop"})
