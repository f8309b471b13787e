"""Chat requests the gateway makes of itself (a compaction pass, gateway/compaction.py; an MCP tool loop's
later model calls, gateway/mcp_loop.py), served by gateway/proxy.py `serve_body` as if they had come over
HTTP (routed, limited, billed to the caller, an outcome row each), and their answers read back."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from engine.server.errors import APIError
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
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise APIError(answer.status_code, f"{failure}: {message or 'no message'}",
                       code=(error.get("code") if isinstance(error, dict) else None) or code)
    headers = {k: v for k, v in answer.headers.items() if k.startswith(("x-pitstop-", "x-ratelimit-"))}
    return payload, headers
