"""Answers as the response cache keeps them: whole, in OpenAI's shape. A streamed answer is put back
together from its chunks (`StreamAssembler`) so a later request, streamed or not, can have it; a kept
answer is streamed again as chunks (`replay_chunks`): per choice its text (and reasoning) in one
chunk, its tool calls in one, its finish, then the usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import Kind

_ENVELOPE = ("id", "created", "model", "system_fingerprint")
_CHAT_TEXT = ("content", "reasoning_content", "refusal")
_COMPLETION_LOGPROBS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


@dataclass
class _Choice:
    role: str | None = None
    text: dict[str, list[str]] = field(default_factory=dict)  # content, reasoning_content, refusal
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: dict[str, list] | None = None
    finish_reason: str | None = None


class StreamAssembler:
    """Chunks of one streamed answer, in order, made into the whole answer they stand for. `whole()` is
    None where the stream did not end every choice, or carried what this does not know how to keep
    (a delta field other than role, text, reasoning, refusal and tool calls): such answers are not cached."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.envelope: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None
        self.unknown = False

    def add(self, chunk: dict) -> None:
        if self.unknown:
            return
        for name in _ENVELOPE:
            if chunk.get(name) is not None:
                self.envelope.setdefault(name, chunk[name])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for raw in chunk.get("choices") or ():
            choice = self.choices.setdefault(int(raw.get("index") or 0), _Choice())
            if raw.get("finish_reason"):
                choice.finish_reason = raw["finish_reason"]
            self._logprobs(choice, raw.get("logprobs"))
            if self.kind == "completion":
                if isinstance(raw.get("text"), str):
                    choice.text.setdefault("text", []).append(raw["text"])
                continue
            delta = raw.get("delta") or {}
            for name, value in delta.items():
                if value is None:
                    continue
                if name == "role":
                    choice.role = value
                elif name in _CHAT_TEXT and isinstance(value, str):
                    choice.text.setdefault(name, []).append(value)
                elif name == "tool_calls" and isinstance(value, list):
                    self._tool_calls(choice, value)
                else:
                    self.unknown = True

    @staticmethod
    def _tool_calls(choice: _Choice, calls: list) -> None:
        for part in calls:
            call = choice.tool_calls.setdefault(int(part.get("index") or 0), {"arguments": []})
            for name in ("id", "type"):
                if part.get(name):
                    call[name] = part[name]
            function = part.get("function") or {}
            if function.get("name"):
                call["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                call["arguments"].append(function["arguments"])

    def _logprobs(self, choice: _Choice, logprobs: Any) -> None:
        if not isinstance(logprobs, dict):
            return
        merged = choice.logprobs if choice.logprobs is not None else {}
        for name, values in logprobs.items():
            if isinstance(values, list):
                merged.setdefault(name, []).extend(values)
        choice.logprobs = merged

    def whole(self) -> dict | None:
        if self.unknown or not self.choices or any(c.finish_reason is None for c in self.choices.values()):
            return None
        chat = self.kind == "chat"
        answer: dict[str, Any] = {"id": self.envelope.get("id", ""),
                                  "object": "chat.completion" if chat else "text_completion",
                                  "created": self.envelope.get("created", 0), "model": self.envelope.get("model", ""),
                                  "choices": [self._choice(i, c) for i, c in sorted(self.choices.items())]}
        if "system_fingerprint" in self.envelope:
            answer["system_fingerprint"] = self.envelope["system_fingerprint"]
        if self.usage is not None:
            answer["usage"] = self.usage
        return answer

    def _choice(self, index: int, choice: _Choice) -> dict:
        if self.kind == "completion":
            return {"index": index, "text": "".join(choice.text.get("text", ())), "logprobs": choice.logprobs,
                    "finish_reason": choice.finish_reason}
        message: dict[str, Any] = {"role": choice.role or "assistant",
                                   "content": "".join(choice.text["content"]) if "content" in choice.text else None}
        for name in ("reasoning_content", "refusal"):
            if name in choice.text:
                message[name] = "".join(choice.text[name])
        if choice.tool_calls:
            message["tool_calls"] = [{"id": call.get("id", ""), "type": call.get("type", "function"),
                                      "function": {"name": call.get("name", ""), "arguments": "".join(call["arguments"])}}
                                     for _, call in sorted(choice.tool_calls.items())]
        return {"index": index, "message": message, "logprobs": choice.logprobs, "finish_reason": choice.finish_reason}


async def replay_chunks(answer: dict, kind: Kind) -> AsyncIterator[dict]:
    """A whole answer streamed again: what a client streaming the same request would have been sent."""
    chat = kind == "chat"
    envelope = {name: answer[name] for name in _ENVELOPE if name in answer}
    envelope["object"] = "chat.completion.chunk" if chat else "text_completion"
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        logprobs = choice.get("logprobs")
        if not chat:
            yield {**envelope, "choices": [{"index": index, "text": choice.get("text") or "", "logprobs": logprobs,
                                            "finish_reason": None}]}
            yield {**envelope, "choices": [{"index": index, "text": "", "logprobs": None,
                                            "finish_reason": choice.get("finish_reason")}]}
            continue
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role") or "assistant"}
        for name in _CHAT_TEXT:
            if message.get(name) is not None:
                delta[name] = message[name]
        yield {**envelope, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}]}
        if message.get("tool_calls"):
            calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            yield {**envelope, "choices": [{"index": index, "delta": {"tool_calls": calls}, "logprobs": None,
                                            "finish_reason": None}]}
        yield {**envelope, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                        "finish_reason": choice.get("finish_reason")}]}
    if answer.get("usage") is not None:
        yield {**envelope, "choices": [], "usage": answer["usage"]}
