"""The JSON objects of one OpenAI answer: a chat completion or legacy text completion, whole or as chunks,
and its usage (engine/openai_generation.py fills them)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from engine.outputs import RequestOutput


def usage(out: RequestOutput) -> dict:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}


@dataclass(frozen=True)
class Answer:
    """One choice, whole: its text (None when it is only tool calls), finish reason, logprobs and calls."""

    text: str | None
    finish_reason: str | None
    logprobs: dict | None = None
    tool_calls: list[dict] | None = None
    reasoning: str | None = None  # a reasoning model's thinking (engine/reasoning.py)


class Shapes:
    """The JSON objects of one response: OpenAI's chat or legacy text-completion format."""

    def __init__(self, chat: bool, model: str, include_usage: bool, response_id: str | None = None) -> None:
        self.chat = chat
        self.id = response_id or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _envelope(self, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.chat else ""),
                "created": self.created, "model": self.model}

    def chunk(self, text: str | None, finish_reason: str | None, role: bool = False,
              logprobs: dict | None = None, index: int = 0, tool_calls: list[dict] | None = None,
              reasoning: str | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            if reasoning:
                delta["reasoning_content"] = reasoning
            if tool_calls:
                # whole calls numbered here; a call streamed as written (engine/call_stream.py) is numbered already
                delta["tool_calls"] = [call if "index" in call else {"index": k, **call}
                                       for k, call in enumerate(tool_calls)]
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        out = self._envelope(chunk=True) | {"choices": [choice]}
        return out | {"usage": None} if self.include_usage else out

    def usage_chunk(self, last: RequestOutput) -> dict:
        return self._envelope(chunk=True) | {"choices": [], "usage": usage(last)}

    def response(self, choices: list[Answer], last: RequestOutput) -> dict:
        """One choice per answer; `last` carries the usage of them all."""
        if self.chat:
            out = [{"index": i, "message": {"role": "assistant", "content": a.text} | (
                {"reasoning_content": a.reasoning} if a.reasoning is not None else {}) | (
                {"tool_calls": a.tool_calls} if a.tool_calls else {}), "logprobs": a.logprobs,
                    "finish_reason": a.finish_reason} for i, a in enumerate(choices)]
        else:
            out = [{"index": i, "text": a.text, "logprobs": a.logprobs, "finish_reason": a.finish_reason}
                   for i, a in enumerate(choices)]
        return self._envelope(chunk=False) | {"choices": out, "usage": usage(last)}
