"""OpenAI's Responses API (POST /v1/responses) on top of chat completions: the request becomes a chat
request, which then goes through all a chat does (routing, ranking, sessions, verification, the
outcome row), and the chat answer, whole or streamed, becomes a Response again.

Stateless: nothing is stored under a response id, so `previous_response_id` and `conversation` are a
400 that says to send the whole conversation in `input` (as agents that keep their own history do).
Function tools only; text and image input parts; `text.format` becomes `response_format`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from engine.server.errors import APIError, bad_request
from engine.server.json_out import json_bytes

# Request fields read here; anything else is a 400, as it would be for a chat request it can't be.
_PASSED = ("model", "temperature", "top_p", "user", "metadata", "parallel_tool_calls", "stream", "prompt_cache_key",
           "session_id", "priority", "pin_ttl_s", "cost_preference")  # the last four: Pitstop's own
_READ = ("input", "instructions", "tools", "tool_choice", "max_output_tokens", "text", "reasoning")
_IGNORED = ("store", "truncation", "include", "service_tier", "safety_identifier",
            "top_logprobs", "stream_options", "background", "max_tool_calls")
_STATEFUL = ("previous_response_id", "conversation", "prompt")
_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")


def chat_request(raw: Any) -> dict:
    """The chat request a Responses request stands for; a 400 naming the field for what it cannot be."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    for name in _STATEFUL:
        if raw.get(name) is not None:
            raise bad_request(f"'{name}' is not supported: Pitstop keeps no responses; send the whole "
                              "conversation in 'input'", name, "unsupported")
    if raw.get("background"):
        raise bad_request("'background' is not supported", "background", "unsupported")
    unknown = sorted(set(raw) - {*_PASSED, *_READ, *_IGNORED})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    chat = {name: raw[name] for name in _PASSED if raw.get(name) is not None}
    messages = []
    instructions = raw.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string", "instructions", "invalid_type")
        messages.append({"role": "system", "content": instructions})
    messages += _messages(raw.get("input"))
    chat["messages"] = messages
    if raw.get("tools") is not None:
        chat["tools"] = _tools(raw["tools"])
    if raw.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(raw["tool_choice"])
    if (limit := raw.get("max_output_tokens")) is not None:
        if type(limit) is not int or limit < 1:
            raise bad_request("'max_output_tokens' must be a positive integer", "max_output_tokens", "invalid_value")
        chat["max_tokens"] = limit
    if (response_format := _response_format(raw.get("text"))) is not None:
        chat["response_format"] = response_format
    effort = raw.get("reasoning", {}).get("effort") if isinstance(raw.get("reasoning"), dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # the completed event carries the usage
    return chat


def _messages(items: Any) -> list[dict]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad_request("'input' must be a string or a non-empty list of items", "input", "invalid_type")
    messages: list[dict] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{where}' must be an object", where, "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in _ROLES:
                raise bad_request(f"'{where}.role' must be one of {list(_ROLES)}", f"{where}.role")
            messages.append({"role": item["role"], "content": _content(item.get("content"), f"{where}.content",
                                                                        item["role"] == "assistant")})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # a call after its text, or a parallel call
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _content(output, f"{where}.output", True)
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where), "content": content})
        elif kind == "reasoning":
            continue  # nothing a chat model reads
        else:
            raise bad_request(f"'{where}.type' {kind!r} is not supported (message, function_call, "
                              "function_call_output, reasoning)", f"{where}.type", "unsupported")
    return messages


def _string(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise bad_request(f"'{where}.{name}' must be a string", f"{where}.{name}", "invalid_type")
    return value


def _content(content: Any, where: str, as_text: bool) -> str | list[dict]:
    """A message's content as a chat's: a string, or text and image parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or a list of parts", where, "invalid_type")
    parts: list[dict] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str) and not as_text:
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"],
                                                             "detail": part.get("detail") or "auto"}})
        else:
            raise bad_request(f"'{where}[{i}]' must be an input_text or input_image part", f"{where}[{i}]",
                              "unsupported")
    return "".join(p["text"] for p in parts) if as_text else parts


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools", "invalid_type")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise bad_request(f"'tools[{i}]' must be a function tool with a name (other tools are not supported)",
                              f"tools[{i}]", "unsupported")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request("'tool_choice' must be auto, none, required or a function by name", "tool_choice",
                      "unsupported")


def _response_format(text: Any) -> dict | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request("'text.format' must be text, json_object or json_schema (with a schema)", "text.format",
                      "unsupported")


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req-")


def request_id_of(any_id: str) -> str:
    """The request id a Response's id names (feedback may quote either); other ids as they are."""
    return "req-" + any_id.removeprefix("resp_") if any_id.startswith("resp_") else any_id


def _usage(usage: dict | None) -> dict | None:
    if not usage:
        return None
    details = usage.get("prompt_tokens_details") or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


class ResponseEnvelope:
    """What every Response of one request repeats: its id, creation time and the request's settings."""

    def __init__(self, request_id: str, raw: dict) -> None:
        self.id = response_id(request_id)
        self.created_at = int(time.time())
        tool_choice = raw.get("tool_choice")
        self.settings = {"instructions": raw.get("instructions"), "max_output_tokens": raw.get("max_output_tokens"),
                         "metadata": raw.get("metadata") or {},
                         "parallel_tool_calls": raw.get("parallel_tool_calls", True),
                         "temperature": raw.get("temperature"), "top_p": raw.get("top_p"),
                         "tool_choice": tool_choice if tool_choice is not None else "auto",
                         "tools": raw.get("tools") or [], "text": raw.get("text") or {"format": {"type": "text"}},
                         "previous_response_id": None, "store": False, "error": None}

    def response(self, model: str, status: str, output: list[dict], usage: dict | None,
                 finish_reason: str | None = None) -> dict:
        incomplete = None
        if status == "completed" and finish_reason in ("length", "content_filter"):
            status = "incomplete"
            incomplete = {"reason": "max_output_tokens" if finish_reason == "length" else "content_filter"}
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "model": model, "output": output, "usage": _usage(usage), "incomplete_details": incomplete,
                **self.settings}

    def from_chat(self, answer: dict, model: str) -> dict:
        """A whole chat answer as a Response."""
        choices = answer.get("choices") or [{}]
        message = choices[0].get("message") or {}
        output: list[dict] = []
        if message.get("content"):
            output.append(_message_item(self.id, message["content"], "completed"))
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            output.append(_call_item(self.id, i, call.get("id") or f"call_{i}", function.get("name") or "",
                                     function.get("arguments") or "", "completed"))
        return self.response(answer.get("model") or model, "completed", output, answer.get("usage"),
                             choices[0].get("finish_reason"))


def _message_item(resp: str, text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    return {"type": "message", "id": "msg_" + resp.removeprefix("resp_"), "role": "assistant", "status": status,
            "content": content}


def _call_item(resp: str, index: int, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"type": "function_call", "id": f"fc_{resp.removeprefix('resp_')}_{index}", "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + json_bytes(event) + b"\n\n"


class ResponseStream:
    """Chat chunks in, Responses stream events out (as SSE bytes), numbered in order: the message's
    text, then each tool call's arguments, each item opened when its first delta comes and closed at
    the end, then `response.completed` with the whole Response and its usage."""

    def __init__(self, envelope: ResponseEnvelope, model: str) -> None:
        self.envelope = envelope
        self.model = model
        self.sequence = 0
        self.items: list[dict] = []  # in output order: the message and the function calls
        self.text: dict | None = None  # the message item, once text came
        self.calls: dict[int, dict] = {}  # the chat's tool-call index -> its function_call item
        self.finish_reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(event)

    def _snapshot(self, status: str, usage: dict | None = None) -> dict:
        return self.envelope.response(self.model, status, [_public(item) for item in self.items], usage,
                                      self.finish_reason)

    def start(self) -> Iterator[bytes]:
        yield self._event("response.created", response=self._snapshot("in_progress"))
        yield self._event("response.in_progress", response=self._snapshot("in_progress"))

    def chunk(self, chunk: dict) -> Iterator[bytes]:
        self.model = chunk.get("model") or self.model
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                yield from self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                yield from self._call(call)

    def _text(self, text: str) -> Iterator[bytes]:
        if self.text is None:
            self.text = _message_item(self.envelope.id, "", "in_progress")
            self.text["_text"] = ""
            self.items.append(self.text)
            index = len(self.items) - 1
            yield self._event("response.output_item.added", output_index=index, item=_public(self.text))
            yield self._event("response.content_part.added", item_id=self.text["id"], output_index=index,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        self.text["_text"] += text
        yield self._event("response.output_text.delta", item_id=self.text["id"], output_index=self.items.index(self.text),
                          content_index=0, delta=text, logprobs=[])

    def _call(self, call: dict) -> Iterator[bytes]:
        index = call.get("index", len(self.calls))
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            item = _call_item(self.envelope.id, index, call.get("id") or f"call_{index}", function.get("name") or "",
                              "", "in_progress")
            self.calls[index] = item
            self.items.append(item)
            yield self._event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            yield self._event("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=self.items.index(item), delta=arguments)

    def completed(self, usage: dict | None) -> Iterator[bytes]:
        for index, item in enumerate(self.items):
            if item is self.text:
                text = item.pop("_text")
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                item.update(status="completed", content=[part])
                yield self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text, logprobs=[])
                yield self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=part)
            else:
                item["status"] = "completed"
                yield self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=item["name"], arguments=item["arguments"])
            yield self._event("response.output_item.done", output_index=index, item=dict(item))
        response = self._snapshot("completed", usage)
        yield self._event(f"response.{response['status']}", response=response)

    def failed(self, error: APIError) -> bytes:
        return self._event("error", code=error.code or "server_error", message=error.message, param=error.param)


def _public(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith("_")}

