"""A fake OpenAI-compatible upstream, run as its own process (uvicorn + a small Starlette app).

It answers /v1/chat/completions and /v1/completions, whole or streamed (usage in a last chunk when
`stream_options.include_usage` is set, as OpenAI does), and answers with a `tool_calls` message when
`tools` are sent (the prompt's text as the first tool's first required parameter, else as `q`; a custom
tool's input, streamed in two pieces), so tool passthrough is tested end to end. The answer is `N` words, the first naming
the instance (`from-a`), so a test can tell which deployment served it; usage counts words. It also
answers /v1/embeddings, with vectors that say what they embed (`embedding_of`).

Faults, chosen per request by directives in the last user message (or the prompt); a directive with
`@name` applies to that instance only:
  [fail:500]  [fail:429@a]   answer that status (OpenAI error shape) before the first byte
  [break:2]                  stream: drop the connection after 2 content chunks (or all, if fewer)
  [delay:0.5]                wait before answering
  [context:20@a]             a context of 20 words: a longer prompt is a 400 in vLLM's words ("This
                             model's maximum context length is ..."), with no error code
  [words:8]                  answer 8 words (default 5)
  [think:3]                  think first, as a reasoning model behind vLLM's reasoning parser does: 3
                             words of `reasoning_content` (streamed before the answer)
  [tools:1]                  call a tool (when tools are sent) only while fewer than 1 tool result
                             follows the last user message, then answer in words: an agent loop that ends
  [echo:1]                   answer the last user message's words (the directives left out): what it read
  [answer:B]  [answer:42@b]  answer exactly this text (a short answer, for verified route groups); one
                             naming the instance wins over one that does not
and per instance through `POST /_admin/mode {"fail": 500}` (every request fails until reset), or
`{"words": 300}` (answers of 300 words where a request sets none).
`GET /_admin/stats` counts the requests this instance took and keeps the last bodies.

`python -m tests.gateway.upstream --name a` binds a free port and prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WORDS = 5
_DIRECTIVE = re.compile(r"\[(fail|break|delay|words|tools|think|context|echo):([0-9.]+)(?:@([\w-]+))?\]")
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
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
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


def build_app(name: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    upstream = Upstream(name)

    async def body_of(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def chat(request: Request) -> Any:
        return await upstream.handle(await body_of(request), chat=True)

    async def completions(request: Request) -> Any:
        return await upstream.handle(await body_of(request), chat=False)

    async def embeddings(request: Request) -> Any:
        return await upstream.embed(await body_of(request))

    async def models(request: Request) -> Any:
        return JSONResponse({"object": "list", "data": [{"id": "upstream", "object": "model", "owned_by": name}]})

    async def mode(request: Request) -> Any:
        body = await body_of(request) or {}
        if "fail" in body:
            upstream.fail_status = body["fail"]
        if "words" in body:
            upstream.default_words = body["words"] or DEFAULT_WORDS
        return JSONResponse({"fail": upstream.fail_status, "words": upstream.default_words})

    async def stats(request: Request) -> Any:
        return JSONResponse({"name": name, "requests": upstream.requests, "bodies": upstream.bodies})

    async def reset(request: Request) -> Any:
        upstream.fail_status, upstream.requests, upstream.bodies = None, 0, []
        upstream.default_words = DEFAULT_WORDS
        return JSONResponse({"reset": True})

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/_admin/mode", mode, methods=["POST"]),
        Route("/_admin/stats", stats, methods=["GET"]),
        Route("/_admin/reset", reset, methods=["POST"]),
    ])


class UpstreamProcess:
    """A running upstream process; `url` is its root, `api_base` what a model entry points at."""

    def __init__(self, name: str, timeout_s: float = 30.0) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.gateway.upstream", "--name", name],
                                     cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the child listens (or dies: empty line)
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"upstream {name} did not start (exit code {self.proc.returncode})")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        self.api_base = self.url + "/v1"
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s)

    def set_fail(self, status: int | None) -> None:
        self._client.post("/_admin/mode", json={"fail": status}).raise_for_status()

    def set_words(self, words: int | None) -> None:
        """Answers of `words` words where a request sets none (None: the default)."""
        self._client.post("/_admin/mode", json={"words": words}).raise_for_status()

    def stats(self) -> dict:
        return self._client.get("/_admin/stats").json()

    def reset(self) -> None:
        self._client.post("/_admin/reset").raise_for_status()

    def close(self) -> None:
        if hasattr(self, "_client"):
            self._client.close()
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="up")
    args = parser.parse_args()
    # IPPROTO_TCP named, or asyncio leaves TCP_NODELAY off on the accepted connections (it checks the
    # protocol), and Nagle meets delayed ACKs: 40 ms a request.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(build_app(args.name), log_level="critical", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def exit_with_parent() -> None:
        sys.stdin.read()  # returns when the test process closes the pipe or dies: no orphans
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
