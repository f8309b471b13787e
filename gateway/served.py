"""Chat requests the gateway makes of itself (a compaction pass, gateway/compaction.py; an MCP tool loop's
later model calls, gateway/mcp_loop.py), served by gateway/proxy.py `serve_body` as if they had come over
HTTP (routed, limited, billed to the caller, an outcome row each), and their answers read back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from starlette.responses import Response

from engine.server.errors import APIError
from engine.server.sse import SSEResponse
from gateway.auth import Caller

# serve_body(caller, endpoint, body, batch_id, extra for the outcome row), bound to the gateway's state.
Serve = Callable[[Caller, str, Any, "str | None", "dict | None"], Awaitable[Response]]


async def served_chat(serve: Serve, caller: Caller, body: dict, extra: dict, failure: str,
                      code: str | None = None) -> tuple[dict, dict[str, str]]:
    """The whole chat answer to `body` and its Pitstop headers; an APIError with the answer's status,
    `failure` and its message (its code, else `code`) where it was refused or failed."""
    answer = await serve(caller, "chat", body, None, extra)
    try:
        payload = json.loads(bytes(answer.body))
    except ValueError:
        payload = {}
    if answer.status_code != 200 or not isinstance(payload, dict):
        raise _refusal(answer.status_code, payload, failure, code)
    headers = {k: v for k, v in answer.headers.items() if k.startswith(("x-pitstop-", "x-ratelimit-"))}
    return payload, headers


async def served_chunks(serve: Serve, caller: Caller, body: dict, extra: dict, failure: str) -> AsyncIterator[dict]:
    """The chat `body` served streamed: its chunks as they come (the last with the usage); an APIError
    where it was refused, or broke mid-stream."""
    answer = await serve(caller, "chat", {**body, "stream": True, "stream_options": {"include_usage": True}}, None,
                         extra)
    if not isinstance(answer, SSEResponse):
        try:
            payload = json.loads(bytes(answer.body))
        except ValueError:
            payload = {}
        raise _refusal(answer.status_code, payload, failure, None)
    async with aclosing(answer.events) as events:
        pending = b""
        async for piece in events:
            pending += piece
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise _refusal(502, chunk, failure + " mid-stream", None)
                yield chunk


def _refusal(status: int, payload: object, failure: str, code: str | None) -> APIError:
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return APIError(status, f"{failure}: {message or 'no message'}",
                    code=(error.get("code") if isinstance(error, dict) else None) or code)
