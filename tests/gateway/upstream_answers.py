"""How the fake upstream (tests/gateway/upstream.py) answers one request, with no server around it:
the directives read from the last user message (or the prompt), the answer's words, its tool call or
reasoning, whole or streamed as OpenAI's chunks, its injected faults, and the embeddings that say what
they embed (`embedding_of`). `Upstream` holds one instance's state (its name, admin mode, request count
and last bodies); upstream.py routes HTTP requests to it and runs it as its own process."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

DEFAULT_WORDS = 5
_DIRECTIVE = re.compile(r"\[(fail|break|delay|words|tools|think|context|echo|prompt|cached|created|created1h):([0-9.]+)"
                        r"(?:@([\w-]+))?\]")
_ANSWER = re.compile(r"\[answer:([^\]@\s]+)(?:@([\w-]+))?\]")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _prompt_words(body: dict, chat: bool) -> tuple[str, int]:
    """(the text directives are read from, the prompt's size in words)."""
    if chat:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [_text(m.get("content")) for m in messages]
        users = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        return (users[-1] if users else ""), sum(len(t.split()) for t in texts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, len(prompt.split())
    if isinstance(prompt, list):  # token ids, or a one-string list
        strings = [p for p in prompt if isinstance(p, str)]
        return " ".join(strings), sum(len(s.split()) for s in strings) or len(prompt)
    return "", 0


def _tool_results_since_user(messages: list) -> int:
    count = 0
    for message in reversed(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            break
        count += role == "tool"
    return count


def _argument_name(tool: dict | None) -> str:
    """The argument a call passes the prompt's text in: the tool's first required parameter, else `q`."""
    function = tool.get("function") if isinstance(tool, dict) else None
    parameters = function.get("parameters") if isinstance(function, dict) else None
    required = parameters.get("required") if isinstance(parameters, dict) else None
    return required[0] if isinstance(required, list) and required and isinstance(required[0], str) else "q"


def _first_tool(body: dict) -> str | None:
    """The name of the first tool sent, which the answer then calls."""
    tools = body.get("tools")
    first = tools[0] if isinstance(tools, list) and tools and isinstance(tools[0], dict) else {}
    function = first.get("custom" if first.get("type") == "custom" else "function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _custom(tool_spec: dict | None) -> bool:
    """Is the tool a custom one (its call takes the prompt's text as its input, as Pitstop's engine's does)?"""
    return isinstance(tool_spec, dict) and tool_spec.get("type") == "custom"


def _usage(found: dict[str, float], prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's usage; `[prompt:N]` reports N prompt tokens, `[cached:N]` N of them read from the prompt cache
    (OpenAI's prompt_tokens_details.cached_tokens), `[created:N]` N written to it, as litellm reports an
    Anthropic answer's cache_creation_input_tokens (and its cache_read_input_tokens beside them), `[created1h:N]`
    N of those for an hour (litellm's cache_creation_token_details)."""
    prompt_tokens = int(found.get("prompt", prompt_tokens))
    usage: dict = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": prompt_tokens + completion_tokens}
    cached, created = int(found.get("cached", 0)), int(found.get("created", 0))
    if cached or created:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if created:
        usage["prompt_tokens_details"]["cache_creation_tokens"] = created
        hour = int(found.get("created1h", 0))
        usage["prompt_tokens_details"]["cache_creation_token_details"] = {
            "ephemeral_5m_input_tokens": created - hour, "ephemeral_1h_input_tokens": hour}
        usage |= {"cache_creation_input_tokens": created, "cache_read_input_tokens": cached}
    return usage


def directives(text: str, name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for kind, value, target in _DIRECTIVE.findall(text):
        if not target or target == name:
            found[kind] = float(value)
    return found


def answer_directive(text: str, name: str) -> str | None:
    """The fixed answer this instance gives, if the text sets one."""
    general = mine = None
    for answer, target in _ANSWER.findall(text):
        if target == name:
            mine = answer
        elif not target:
            general = answer
    return mine or general


def embedding_of(text_or_ids: str | list[int], instance: str, index: int) -> list[float]:
    """The fake embedding of one input: its size in words (or token ids), the instance's letter
    code and the input's place, so a test can check each vector reached the client unchanged."""
    size = len(text_or_ids.split()) if isinstance(text_or_ids, str) else len(text_or_ids)
    return [float(size), float(ord(instance[0])), float(index), 0.5]


def error_response(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)


class Upstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.fail_status: int | None = None
        self.default_words = DEFAULT_WORDS  # an answer's words where the request sets none
        self.requests = 0
        self.bodies: list[dict] = []

    def call_id(self) -> str:
        """Unique per request, as a provider's are (the Agents SDK tells calls apart by it)."""
        return f"call_{self.name}{self.requests}"

    def words(self, count: int) -> list[str]:
        return [f"from-{self.name}"] + [f"w{i}" for i in range(1, count)]

    async def handle(self, body: Any, chat: bool) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        self.requests += 1
        if not isinstance(body, dict) or (chat and not isinstance(body.get("messages"), list)) or (
                not chat and not isinstance(body.get("prompt"), str | list)):
            return error_response(400, "invalid body")
        self.bodies = [*self.bodies[-49:], body]
        text, prompt_tokens = _prompt_words(body, chat)
        found = directives(text, self.name)
        await asyncio.sleep(min(found.get("delay", 0.0), 30.0))
        fail = self.fail_status or int(found.get("fail", 0))
        if fail:
            return error_response(fail, f"injected {fail} from {self.name}")
        if "context" in found and prompt_tokens > found["context"]:
            return error_response(400, f"This model's maximum context length is {int(found['context'])} tokens. "
                                       f"However, you requested {prompt_tokens} tokens in the messages.")
        answer = answer_directive(text, self.name)
        words = [answer] if answer is not None else _DIRECTIVE.sub("", text).split() if "echo" in found else \
            self.words(max(1, int(found.get("words", self.default_words))))
        tool = _first_tool(body) if chat and body.get("tool_choice") != "none" else None
        if tool and "tools" in found and _tool_results_since_user(body["messages"]) >= found["tools"]:
            tool = None
        model = body.get("model") if isinstance(body.get("model"), str) else "upstream"
        thinking = [f"thought{i}" for i in range(1, int(found.get("think", 0)) + 1)] if chat else []
        usage = _usage(found, prompt_tokens, len(words))
        if body.get("stream") is True:
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            events = self._stream(chat, model, words, tool, text, usage if options.get("include_usage") else None,
                                  int(found["break"]) if "break" in found else None, body["tools"][0] if tool else None,
                                  thinking)
            return StreamingResponse(events, media_type="text/event-stream")
        return JSONResponse(self._whole(chat, model, words, tool, text, usage, body["tools"][0] if tool else None,
                                        thinking))

    async def embed(self, body: Any) -> Any:
        """POST /v1/embeddings: one vector per input (embedding_of), as floats or base64 float32."""
        from starlette.responses import Response

        self.requests += 1
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return error_response(400, "invalid body")
        self.bodies = [*self.bodies[-49:], body]
        text = " ".join(i for i in inputs if isinstance(i, str))
        found = directives(text, self.name)
        await asyncio.sleep(min(found.get("delay", 0.0), 30.0))
        if fail := self.fail_status or int(found.get("fail", 0)):
            return error_response(fail, f"injected {fail} from {self.name}")
        vectors: list[Any] = [embedding_of(item, self.name, i) for i, item in enumerate(inputs)]
        tokens = int(sum(v[0] for v in vectors))
        if body.get("encoding_format") == "base64":
            vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        answer = {"object": "list", "model": body.get("model"),
                  "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        # With spaces after separators (json.dumps' default, unlike Starlette's), so a test can tell
        # these bytes from the gateway's own JSON.
        return Response(json.dumps(answer), media_type="application/json")

    def _whole(self, chat: bool, model: str, words: list[str], tool: str | None, text: str, usage: dict,
               tool_spec: dict | None = None, thinking: list[str] | None = None) -> dict:
        envelope = {"id": f"up-{self.name}-{self.requests}", "created": int(time.time()), "model": model,
                    "object": "chat.completion" if chat else "text_completion", "usage": usage}
        if not chat:
            return {**envelope, "choices": [{"index": 0, "text": " ".join(words), "finish_reason": "stop",
                                             "logprobs": None}]}
        message: dict[str, Any] = {"role": "assistant", "content": " ".join(words)}
        finish = "stop"
        if tool is not None:
            call = {"type": "custom", "custom": {"name": tool, "input": text}} if _custom(tool_spec) else \
                {"type": "function", "function": {"name": tool, "arguments": json.dumps({_argument_name(tool_spec): text})}}
            message = {"role": "assistant", "content": None, "tool_calls": [{"id": self.call_id(), **call}]}
            finish = "tool_calls"
        if thinking:
            message["reasoning_content"] = " ".join(thinking)
        return {**envelope, "choices": [{"index": 0, "message": message, "finish_reason": finish}]}

    async def _stream(self, chat: bool, model: str, words: list[str], tool: str | None, text: str,
                      usage: dict | None, break_after: int | None,
                      tool_spec: dict | None = None, thinking: list[str] | None = None) -> AsyncIterator[bytes]:
        envelope = {"id": f"up-{self.name}-{self.requests}", "created": int(time.time()), "model": model,
                    "object": "chat.completion.chunk" if chat else "text_completion"}

        def event(choice: dict | None, **extra: Any) -> bytes:
            data = {**envelope, "choices": [{"index": 0, **choice}] if choice else [], **extra}
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        if chat and tool is not None and _custom(tool_spec):
            half = len(text) // 2
            pieces = [{"delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": self.call_id(), "type": "custom",
                                                                      "custom": {"name": tool, "input": text[:half]}}]}},
                      {"delta": {"tool_calls": [{"index": 0, "custom": {"input": text[half:]}}]}}]
            finish = "tool_calls"
        elif chat and tool is not None:
            pieces = [{"delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": self.call_id(), "type": "function",
                                                                      "function": {"name": tool, "arguments": ""}}]}},
                      {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": json.dumps({_argument_name(tool_spec): text})}}]}}]
            finish = "tool_calls"
        elif chat:
            pieces = [{"delta": {"role": "assistant", "content": w if i == 0 else " " + w}} for i, w in enumerate(words)]
            finish = "stop"
        else:
            pieces = [{"text": w if i == 0 else " " + w} for i, w in enumerate(words)]
            finish = "stop"
        pieces[:0] = [{"delta": {"role": "assistant", "reasoning_content": w if i == 0 else " " + w}}
                      for i, w in enumerate(thinking or ())]
        for i, piece in enumerate(pieces):
            if break_after is not None and i >= break_after:
                raise ConnectionAbortedError("injected stream break")  # uvicorn drops the connection
            yield event({**piece, "finish_reason": None} if chat else {**piece, "finish_reason": None,
                                                                        "logprobs": None})
            await asyncio.sleep(0.002)
        if break_after is not None:  # as many content chunks as asked, then no finish
            raise ConnectionAbortedError("injected stream break")
        yield event({"delta": {}, "finish_reason": finish} if chat else {"text": "", "finish_reason": finish})
        if usage is not None:
            yield event(None, usage=usage)
        yield b"data: [DONE]\n\n"
