"""GET /v1/sessions/{id}: an agent session's turns, its instance, its pin (TTL, blocks held by the
engine now) and the cached tokens of each turn."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.server.errors import not_found
from gateway.state import GatewayState


async def get_session(request: Request) -> Response:
    state: GatewayState = request.app.state.pitstop
    await state.auth.authenticate(request.headers)
    session_id = request.path_params["session_id"]
    body = await state.sessions.describe(session_id) if state.sessions is not None else None
    if body is None:
        raise not_found(f"no session {session_id!r} (never seen, or idle past its expiry)", "session_id",
                        "session_not_found")
    return JSONResponse(body)
