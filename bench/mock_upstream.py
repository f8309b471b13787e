"""A mock OpenAI-compatible upstream for the gateway benchmark: fixed answer after a fixed delay.

    .venv/bin/python -m bench.mock_upstream --port 9100 [--delay-ms 20] [--chunks 10] [--chunk-interval-ms 5]

A raw ASGI app on uvicorn (1 worker) so the mock itself costs as little CPU as possible: the benchmark
shares 2 cores between the load generator, this mock and the gateway under test.

- `POST /v1/chat/completions`, non-streaming: waits `delay_ms`, returns one choice (`--answer`) plus `usage`.
- streaming: headers at once, the first content chunk after `delay_ms` (the upstream's own TTFT), then
  `chunks - 1` more chunks `chunk_interval_ms` apart, a finish chunk, a usage chunk when the request
  asked for `stream_options.include_usage`, and `data: [DONE]`. With `--answer`, the chunks are its
  words instead (one word a chunk).
- `POST /v1/embeddings`: waits `delay_ms`, returns one `--embedding-dims` vector an input (the same
  one each time; floats as a real model writes them, or base64 float32 with `encoding_format`),
  billed 8 tokens an input. Bodies are rendered once a batch size and format.
- `GET /v1/models`, `GET /health`.
- Faults (bench/gateway_fallbacks.py): `--fail-rate 0.2` answers that share of chat requests with a
  `--fail-status` (503) error at once, drawn from a seeded generator; `--outage 10 20` fails every chat
  request from 10 to 20 seconds after the first one.
- A heavy tail (bench/gateway_hedging.py): `--slow-rate 0.05 --slow-delay-ms 1500` makes that share of
  chat requests, drawn from a generator seeded by `--seed`, wait `--slow-delay-ms` instead of `--delay-ms`
  before their first byte. Off (0) by default.
- A provider's quota (bench/gateway_deployment_limits.py): `--limit-rpm 90` answers a chat request past 90
  in the last `--limit-window-s` (60) seconds with a 429 (OpenAI's `rate_limit_exceeded`) and a
  `retry-after` of when the oldest leaves; a refused request takes no slot. Off by default.
  `GET /stats` says how many chat requests it served and how many it refused so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import random
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ANSWER = "This is the mock answer."
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 10  # the non-streaming answer is billed as if it were `chunks` tokens long
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class MockUpstream:
    """The ASGI app. Response bodies are formatted from templates: unique ids, no per-request json.dumps."""

    def __init__(self, delay_ms: float, chunks: int, chunk_interval_ms: float, answer: str = ANSWER,
                 embedding_dims: int = 1536, fail_rate: float = 0.0, fail_status: int = 503,
                 outage: tuple[float, float] | None = None, slow_rate: float = 0.0, slow_delay_ms: float = 0.0,
                 seed: int = 2, limit_rpm: int | None = None, limit_window_s: float = 60.0) -> None:
        self.answer = answer
        self.limit_rpm, self.limit_window_s = limit_rpm, limit_window_s
        self.admitted: deque[float] = deque()  # when the chat requests of the quota's window came
        self.rate_limited = 0
        self.slow_rate, self.slow_delay = slow_rate, slow_delay_ms / 1000
        self.tail = random.Random(seed)
        self.fail_rate, self.fail_status, self.outage = fail_rate, fail_status, outage
        self.faults = random.Random(1)
        self.first_request: float | None = None
        rng = random.Random(0)
        self.vector = [rng.gauss(0, 0.03) for _ in range(embedding_dims)]
        self.embeddings: dict[tuple[int, bool], bytes] = {}
        self.delay = delay_ms / 1000
        words = answer.split() if answer != ANSWER else [f"tok{i}" for i in range(max(chunks, 1))]
        self.pieces = [json.dumps(w if i == 0 else " " + w)[1:-1] for i, w in enumerate(words)]
        self.chunks = len(self.pieces)
        self.interval = chunk_interval_ms / 1000
        self.ids = itertools.count()
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.endswith("/chat/completions") and method == "POST":
            body = await _read_body(receive)
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                await _respond(send, 400, b'{"error":{"message":"bad json"}}')
                return
            if (retry_after := self._over_quota()) is not None:
                self.rate_limited += 1
                await _respond(send, 429, b'{"error":{"message":"rate limit reached for requests","type":'
                               b'"requests","param":null,"code":"rate_limit_exceeded"}}',
                               [(b"retry-after", str(max(1, round(retry_after))).encode())])
                return
            if self._failing():
                await _respond(send, self.fail_status, b'{"error":{"message":"injected failure","type":"server_error",'
                                                       b'"param":null,"code":null}}')
                return
            self.served += 1
            model = str(req.get("model", "mock"))
            rid = f"chatcmpl-mock-{next(self.ids)}"
            delay = self._first_byte_delay()
            if req.get("stream"):
                usage = bool((req.get("stream_options") or {}).get("include_usage"))
                await self._stream(send, rid, model, usage, delay)
            else:
                await asyncio.sleep(delay)
                await _respond(send, 200, self._completion(rid, model))
        elif path.endswith("/embeddings") and method == "POST":
            req = json.loads(await _read_body(receive) or b"{}")
            inputs = req.get("input")
            count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
            self.served += 1
            await asyncio.sleep(self.delay)
            await _respond(send, 200, self._embeddings(count, req.get("encoding_format") == "base64"))
        elif path.endswith("/models") and method == "GET":
            await _respond(send, 200, b'{"object":"list","data":[{"id":"mock","object":"model","owned_by":"bench"}]}')
        elif path == "/stats":
            await _respond(send, 200, json.dumps({"served": self.served, "rate_limited": self.rate_limited}).encode())
        elif path in ("/health", "/healthz"):
            await _respond(send, 200, b'{"status":"ok"}')
        else:
            await _respond(send, 404, b'{"error":{"message":"not found"}}')

    def _over_quota(self) -> float | None:
        """None where the request is within `limit_rpm`, else the seconds until the oldest leaves the window."""
        if self.limit_rpm is None:
            return None
        now = time.monotonic()
        while self.admitted and self.admitted[0] <= now - self.limit_window_s:
            self.admitted.popleft()
        if len(self.admitted) >= self.limit_rpm:
            return self.admitted[0] + self.limit_window_s - now
        self.admitted.append(now)
        return None

    def _failing(self) -> bool:
        now = time.monotonic()
        if self.first_request is None:
            self.first_request = now
        if self.outage is not None and self.outage[0] <= now - self.first_request < self.outage[1]:
            return True
        return self.fail_rate > 0 and self.faults.random() < self.fail_rate

    def _first_byte_delay(self) -> float:
        if self.slow_rate > 0 and self.tail.random() < self.slow_rate:
            return self.slow_delay
        return self.delay

    def _embeddings(self, count: int, as_base64: bool) -> bytes:
        if (count, as_base64) not in self.embeddings:
            vector: Any = (base64.b64encode(struct.pack(f"<{len(self.vector)}f", *self.vector)).decode()
                           if as_base64 else self.vector)
            self.embeddings[(count, as_base64)] = json.dumps({
                "object": "list", "model": "mock-embed",
                "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
                "usage": {"prompt_tokens": 8 * count, "total_tokens": 8 * count}}, separators=(",", ":")).encode()
        return self.embeddings[(count, as_base64)]

    def _completion(self, rid: str, model: str) -> bytes:
        return json.dumps({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": self.chunks,
                      "total_tokens": PROMPT_TOKENS + self.chunks},
        }, separators=(",", ":")).encode()

    async def _stream(self, send: Send, rid: str, model: str, include_usage: bool, delay: float) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        head = f'data: {{"id":"{rid}","object":"chat.completion.chunk","created":{int(time.time())},"model":"{model}",'
        await asyncio.sleep(delay)
        for i in range(self.chunks):
            if i:
                await asyncio.sleep(self.interval)
            role = '"role":"assistant",' if i == 0 else ""
            chunk = f'{head}"choices":[{{"index":0,"delta":{{{role}"content":"{self.pieces[i]}"}},"finish_reason":null}}]}}\n\n'
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        tail = f'{head}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}\n\n'
        if include_usage:
            tail += (f'{head}"choices":[],"usage":{{"prompt_tokens":{PROMPT_TOKENS},'
                     f'"completion_tokens":{self.chunks},"total_tokens":{PROMPT_TOKENS + self.chunks}}}}}\n\n')
        tail += "data: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS + (headers or [])})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk-interval-ms", type=float, default=5.0)
    parser.add_argument("--answer", default=ANSWER, help="the non-streaming answer's content")
    parser.add_argument("--embedding-dims", type=int, default=1536)
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of chat requests that fail")
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--outage", type=float, nargs=2, metavar=("FROM_S", "TO_S"),
                        help="every chat request fails in this window, seconds after the first one")
    parser.add_argument("--slow-rate", type=float, default=0.0, help="share of chat requests slow to start")
    parser.add_argument("--slow-delay-ms", type=float, default=1500.0, help="their wait before the first byte")
    parser.add_argument("--seed", type=int, default=2, help="seeds the draw of the slow requests")
    parser.add_argument("--limit-rpm", type=int, default=None, help="a provider's quota: chat requests a window")
    parser.add_argument("--limit-window-s", type=float, default=60.0, help="the quota's sliding window")
    args = parser.parse_args(argv)
    app = MockUpstream(args.delay_ms, args.chunks, args.chunk_interval_ms, args.answer, args.embedding_dims,
                       args.fail_rate, args.fail_status, tuple(args.outage) if args.outage else None,
                       args.slow_rate, args.slow_delay_ms, args.seed, args.limit_rpm, args.limit_window_s)
    # Long keep-alive: connections from the load generator and the gateways stay open between points.
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning", access_log=False,
                lifespan="on", timeout_keep_alive=120, backlog=4096)


if __name__ == "__main__":
    main()
