"""A chat stream as Responses API stream events (SSE bytes): a reasoning model's thinking, the message's
text, then each tool call's arguments, each item opened when its first delta comes and closed at the end,
then `response.completed` with the whole Response and its usage. A custom tool's input comes as the chat
streams it (in one piece where it came from an upstream without custom tools, which wrote it as a
function's arguments: engine/custom_tools.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from engine.server.errors import APIError
from engine.server.json_out import json_bytes
from gateway.backends.answers import reasoning_of
from gateway.file_search import citations
from gateway.responses_api import (
    ResponseEnvelope,
    call_item,
    logprobs_of,
    message_item,
    public_item,
    reasoning_item,
)


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json_bytes(event) + b"\n\n"


class ResponseStream:
    """Chat chunks in, Responses stream events out, numbered in order. `keep` is awaited with the
    finished Response before its last event goes out (gateway/stored_responses.py stores it there), and
    `end` once the turn is over, before its last event or its error goes out."""

    def __init__(self, envelope: ResponseEnvelope, model: str,
                 keep: Callable[[dict], Awaitable[None]] | None = None,
                 end: Callable[[], Awaitable[None]] | None = None) -> None:
        self.envelope = envelope
        self.model = model
        self.keep = keep
        self.end = end
        self.sequence = 0
        self.items: list[dict] = list(envelope.lead_items)  # in output order: a compaction, a search, the message, calls
        self.text: dict | None = None  # the message item, once text came
        self.reasoning: dict | None = None  # the reasoning item, once a reasoning model's thinking came
        self.calls: dict[int, dict] = {}  # the chat's tool-call index -> its function_call item
        self.finish_reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(event)

    def _snapshot(self, status: str, usage: dict | None = None) -> dict:
        return self.envelope.response(self.model, status, [public_item(item) for item in self.items], usage,
                                      self.finish_reason)

    def start(self) -> Iterator[bytes]:
        leads, self.items = self.items, []
        yield self._event("response.created", response=self._snapshot("in_progress"))
        yield self._event("response.in_progress", response=self._snapshot("in_progress"))
        for item in leads:  # a compaction or a search, made before the model was called: as OpenAI streams them
            index = len(self.items)
            self.items.append(item)
            if item["type"] == "compaction":
                yield self._event("response.output_item.added", output_index=index, item=item)
                yield self._event("response.output_item.done", output_index=index, item=item)
                continue
            yield self._event("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
            for phase in ("in_progress", "searching", "completed"):
                yield self._event(f"response.file_search_call.{phase}", output_index=index, item_id=item["id"])
            yield self._event("response.output_item.done", output_index=index, item=item)

    def chunk(self, chunk: dict) -> Iterator[bytes]:
        self.model = chunk.get("model") or self.model
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            delta = choice.get("delta") or {}
            if thinking := reasoning_of(delta):
                yield from self._reasoning(thinking)
            logprobs = logprobs_of(choice)
            if isinstance(delta.get("content"), str) and delta["content"] or logprobs:
                yield from self._text(delta.get("content") or "", logprobs)
            for call in delta.get("tool_calls") or ():
                yield from self._call(call)

    def _text(self, text: str, logprobs: list[dict]) -> Iterator[bytes]:
        if self.text is None:
            self.text = message_item(self.envelope.id, "", "in_progress")
            self.text["_text"], self.text["_logprobs"] = "", []
            self.items.append(self.text)
            index = len(self.items) - 1
            yield self._event("response.output_item.added", output_index=index, item=public_item(self.text))
            yield self._event("response.content_part.added", item_id=self.text["id"], output_index=index,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        self.text["_text"] += text
        self.text["_logprobs"] += logprobs
        yield self._event("response.output_text.delta", item_id=self.text["id"], output_index=self.items.index(self.text),
                          content_index=0, delta=text, logprobs=logprobs)

    def _reasoning(self, text: str) -> Iterator[bytes]:
        if self.reasoning is None:
            self.reasoning = reasoning_item(self.envelope.id, "", "in_progress")
            self.reasoning["_text"] = ""
            self.items.append(self.reasoning)
            yield self._event("response.output_item.added", output_index=len(self.items) - 1,
                              item=public_item(self.reasoning))
        self.reasoning["_text"] += text
        yield self._event("response.reasoning_text.delta", item_id=self.reasoning["id"],
                          output_index=self.items.index(self.reasoning), content_index=0, delta=text)

    def _call(self, call: dict) -> Iterator[bytes]:
        index = call.get("index", len(self.calls))
        item = self.calls.get(index)
        if item is None:
            start = {**call, "function": {**(call.get("function") or {}), "arguments": ""},
                     "custom": {**(call.get("custom") or {}), "input": ""}}
            item = call_item(self.envelope.id, index, start, "in_progress")
            self.calls[index] = item
            self.items.append(item)
            yield self._event("response.output_item.added", output_index=len(self.items) - 1, item=public_item(item))
        if item["type"] == "custom_tool_call":
            piece = (call.get("custom") or {}).get("input")
            if isinstance(piece, str) and piece:
                item["input"] += piece
                yield self._event("response.custom_tool_call_input.delta", item_id=item["id"],
                                  output_index=self.items.index(item), delta=piece)
            return
        arguments = (call.get("function") or {}).get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            yield self._event("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=self.items.index(item), delta=arguments)

    def completed(self) -> Iterator[bytes]:
        """Each item's closing events; the Response itself comes from `final` and `final_event`."""
        for index, item in enumerate(self.items):
            if item["type"] in ("file_search_call", "compaction"):
                continue  # done when the stream started
            if item is self.text:
                text, logprobs = item.pop("_text"), item.pop("_logprobs")
                annotations = citations(text, self.envelope.cited)
                for i, annotation in enumerate(annotations):  # the files the answer names, once it is whole
                    yield self._event("response.output_text.annotation.added", item_id=item["id"], output_index=index,
                                      content_index=0, annotation_index=i, annotation=annotation)
                part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": logprobs}
                item.update(status="completed", content=[part])
                yield self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text, logprobs=logprobs)
                yield self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=part)
            elif item is self.reasoning:
                text = item.pop("_text")
                item.update(status="completed", content=[{"type": "reasoning_text", "text": text}])
                yield self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text)
            elif item["type"] == "custom_tool_call":
                item["status"] = "completed"
                yield self._event("response.custom_tool_call_input.done", item_id=item["id"], output_index=index,
                                  input=item["input"])
            else:
                item["status"] = "completed"
                yield self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"])
            yield self._event("response.output_item.done", output_index=index, item=dict(item))

    def final(self, usage: dict | None) -> dict:
        """The whole Response, once every item is done."""
        return self._snapshot("completed", usage)

    def final_event(self, response: dict) -> bytes:
        return self._event(f"response.{response['status']}", response=response)

    def failed(self, error: APIError) -> bytes:
        return self._event("error", code=error.code or "server_error", message=error.message, param=error.param)
