"""A chat stream as Responses API stream events (SSE bytes): a reasoning model's thinking, the message's
text, then each tool call's arguments, each item opened when its first delta comes and closed at the end,
then `response.completed` with the whole Response and its usage. A custom tool's input comes as the chat
streams it (in one piece where it came from an upstream without custom tools, which wrote it as a
function's arguments: engine/custom_tools.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from engine.server.errors import APIError
from engine.server.json_out import json_bytes
from gateway.backends.answers import reasoning_of
from gateway.file_search import citations
from gateway.mcp_loop import run_call
from gateway.responses_api import (
    ResponseEnvelope,
    call_item,
    logprobs_of,
    message_item,
    public_item,
    reasoning_item,
)

if TYPE_CHECKING:
    from gateway.mcp_loop import McpLoop


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json_bytes(event) + b"\n\n"


class ResponseStream:
    """Chat chunks in, Responses stream events out, numbered in order. `keep` is awaited with the
    finished Response before its last event goes out (gateway/stored_responses.py stores it there), and
    `end` once the turn is over, before its last event or its error goes out."""

    def __init__(self, envelope: ResponseEnvelope, model: str,
                 keep: Callable[[dict], Awaitable[None]] | None = None,
                 end: Callable[[], Awaitable[None]] | None = None, mcp: McpLoop | None = None) -> None:
        self.envelope = envelope
        self.model = model
        self.keep = keep
        self.end = end
        self.mcp = mcp  # the turn's MCP tool loop (gateway/mcp_loop.py), if it offers MCP tools
        self.follow_up = self._follow_up if mcp is not None else None
        self.resp = envelope.id  # what this model call's item ids are made from (gateway/mcp_loop.py)
        self.step, self.step_start = 0, 0  # the model call of the loop, and where its items start
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
            kind = item["type"]
            if kind == "file_search_call":
                yield self._event("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
                for phase in ("in_progress", "searching", "completed"):
                    yield self._event(f"response.file_search_call.{phase}", output_index=index, item_id=item["id"])
            elif kind == "mcp_list_tools":
                yield self._event("response.output_item.added", output_index=index, item={**item, "tools": []})
                for phase in ("in_progress", "completed"):
                    yield self._event(f"response.mcp_list_tools.{phase}", output_index=index, item_id=item["id"])
            elif kind == "mcp_call":  # an approved call, made before the model was called
                yield self._event("response.output_item.added", output_index=index,
                                  item={**item, "status": "in_progress", "output": None, "error": None})
                yield self._event("response.mcp_call_arguments.done", output_index=index, item_id=item["id"],
                                  arguments=item["arguments"])
                yield self._event(f"response.mcp_call.{item['status']}", output_index=index, item_id=item["id"])
            else:  # a compaction
                yield self._event("response.output_item.added", output_index=index, item=item)
            yield self._event("response.output_item.done", output_index=index, item=item)
        self.step_start = len(self.items)

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
            self.text = message_item(self.resp, "", "in_progress")
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
            self.reasoning = reasoning_item(self.resp, "", "in_progress")
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
            item = call_item(self.resp, index, start, "in_progress")
            if self.mcp is not None:  # a call of an MCP tool: an mcp_call, or a call waiting for approval
                item = self.mcp.classify(item, self.step, index)
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
            if item["type"] in ("function_call", "mcp_call"):  # an approval request's come whole, at its end
                kind = "function_call" if item["type"] == "function_call" else "mcp_call"
                yield self._event(f"response.{kind}_arguments.delta", item_id=item["id"],
                                  output_index=self.items.index(item), delta=arguments)

    def completed(self) -> Iterator[bytes]:
        """Each item's closing events; the Response itself comes from `final` and `final_event`."""
        for index, item in enumerate(self.items):
            if index < self.step_start:
                continue  # done when the stream started, or by an earlier model call of the tool loop
            if item["type"] == "mcp_call":  # done once it has been made (_follow_up)
                yield self._event("response.mcp_call_arguments.done", item_id=item["id"], output_index=index,
                                  arguments=item["arguments"])
                continue
            if item["type"] == "mcp_approval_request":
                yield self._event("response.output_item.done", output_index=index, item=dict(item))
                continue
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
        return self._snapshot("completed", self.mcp.total_usage(usage) if self.mcp is not None else usage)

    async def _follow_up(self) -> AsyncIterator[bytes]:
        """The MCP tool loop after the streamed answer: its calls made, and the model called again (streamed
        as it answers) until it answers without calling one (gateway/mcp_loop.py)."""
        assert self.mcp is not None
        while True:
            pending = [i for i in self.items[self.step_start:] if i["type"] == "mcp_call" and i["status"] == "in_progress"]
            for item in pending:
                yield self._event("response.mcp_call.in_progress", item_id=item["id"], output_index=self.items.index(item))
            for old, new in zip(pending, await asyncio.gather(*(run_call(self.mcp.tools, i) for i in pending)),
                                strict=True):
                index = self.items.index(old)
                self.items[index] = new
                yield self._event(f"response.mcp_call.{new['status']}", item_id=new["id"], output_index=index)
                yield self._event("response.output_item.done", output_index=index, item=new)
            made = [public_item(i) for i in self.items[self.step_start:]]
            if not self.mcp.goes_on(made):
                return
            self.step += 1
            self.resp, self.step_start = self.envelope.step_id(self.step), len(self.items)
            self.text = self.reasoning = None
            self.calls = {}
            async with aclosing(self.mcp.next_chunks(made)) as chunks:  # a client that leaves ends the call
                async for chunk in chunks:
                    for event in self.chunk(chunk):
                        yield event
            for event in self.completed():
                yield event

    def final_event(self, response: dict) -> bytes:
        return self._event(f"response.{response['status']}", response=response)

    def failed(self, error: APIError) -> bytes:
        return self._event("error", code=error.code or "server_error", message=error.message, param=error.param)

