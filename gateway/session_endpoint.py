"""GET /v1/sessions/{id}: an agent session's turns, its instance, its pin (TTL, blocks held by the
engine now) and the cached tokens of each turn."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.server.errors import APIError, not_found
from gateway.state import GatewayState
from storage.redis_state import StateUnavailableError


async def get_session(request: Request) -> Response:
    state: GatewayState = request.app.state.pitstop
    caller = await state.auth.authenticate(request.headers)
    session_id = request.path_params["session_id"]
    try:
        body = await state.sessions.describe(session_id, caller.key_id) if state.sessions is not None else None
    except StateUnavailableError as exc:
        raise APIError(503, f"the session store is not answering: {exc}", code="session_store_unavailable") from None
    if body is None:
        raise not_found(f"no session {session_id!r} (never seen, or idle past its expiry)", "session_id",
                        "session_not_found")
    return JSONResponse(body)
