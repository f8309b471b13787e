"""How the gateway's own endpoints beside the proxied ones (/v1/rerank: gateway/rerank.py, /v1/moderations:
gateway/moderation.py) answer and fail: a request served under the drain's count, and any failure answered
as gateway/proxy.py answers one: its outcome row, its budget hold settled, OpenAI's error shape with the
key's x-ratelimit-* headers and a Retry-After where one is known; a bug a 500 in that shape; a client that
left a 499 row; a request the shutdown cut a 503."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from engine.server.errors import APIError
from gateway.backends.base import BackendError
from gateway.limit_gate import LimitExceeded
from gateway.outcomes import OutcomeDraft
from gateway.serving import as_api_error, internal_error, response_headers
from gateway.state import GatewayState

log = logging.getLogger("pitstop.gateway")
# (the HTTP request, or None for a batch's line; the state; the request's draft; its body where no HTTP
# request brings one) -> the answer
Serve = Callable[[Request | None, GatewayState, OutcomeDraft, Any], Awaitable[Response]]


async def answered(request: Request | None, state: GatewayState, draft: OutcomeDraft, raw: Any,
                   serve: Serve) -> Response:
    """`serve`'s answer, or its failure as OpenAI's error with the request's row."""
    with state.drain.track():
        try:
            return await serve(request, state, draft, raw)
        except (APIError, BackendError, ClientDisconnect) as exc:
            retry_after_s = exc.retry_after_s if isinstance(exc, LimitExceeded | BackendError) else None
            if isinstance(exc, LimitExceeded) and exc.admission is not None:
                draft.admission = exc.admission  # what is left, in the refusal's x-ratelimit-* headers
            return await failed(state, draft, as_api_error(exc), retry_after_s)
        except Exception:  # a bug: the client still gets OpenAI's shape, the request its row
            log.exception("%s request %s failed inside the gateway", draft.endpoint, draft.request_id)
            return await failed(state, draft, internal_error(draft), None)
        except asyncio.CancelledError:
            cut = state.drain.absorb()
            if cut is not None:
                return await failed(state, draft, cut, 1.0, kind="aborted")
            draft.fail(499, "the client disconnected", kind="aborted")
            state.recorder.finish(draft)
            raise


async def failed(state: GatewayState, draft: OutcomeDraft, error: APIError, retry_after_s: float | None,
                 kind: str = "error") -> Response:
    """As gateway/proxy.py fails a request: its row, its budget settled, OpenAI's error shape."""
    draft.fail(error.status, error.message, kind=kind)
    draft.extra["code"] = error.code
    state.recorder.finish(draft)
    await draft.settled()
    response = error.response()
    response.headers.update(response_headers(draft))
    if retry_after_s is not None:
        response.headers["retry-after"] = str(max(1, round(retry_after_s)))
    return response
