"""OpenAI's Realtime API through the gateway: `GET /v1/realtime?model=<model_name>` (also /realtime, and
Azure's `deployment=` for `model=`) upgraded to a WebSocket, relayed to a realtime deployment of the model
(gateway/realtime_target.py) frame for frame, one outcome row per response (gateway/realtime_session.py).

Before the upgrade, as every endpoint: the key (`Authorization: Bearer`, or a browser's
`openai-insecure-api-key.<key>` subprotocol), the key's and its team's model access, the model (a realtime
one), the key's and team's rate limits and budgets (a connection takes a request's rate slot), and the
upstream's connection. Any refusal is an HTTP error in OpenAI's shape (the WebSocket denial response), and
a row saying why. A session is tracked by the drain (gateway/drain.py): the shutdown's cut closes it 1012
(the client may reconnect to another replica), upstream 1001."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.datastructures import Headers
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from engine.server.errors import APIError, bad_request
from gateway.auth import Caller, bearer_token
from gateway.outcomes import OutcomeDraft
from gateway.realtime_session import ENDPOINT, RealtimeSession, SessionEnded
from gateway.realtime_target import Upstream, check_realtime_model, open_upstream
from gateway.realtime_usage import realtime_prices
from gateway.routing import Route
from gateway.state import GatewayState

log = logging.getLogger("pitstop.realtime")
PATHS = ("/v1/realtime", "/realtime")
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # a browser's key: it can set no Authorization header
REALTIME_SUBPROTOCOL = "realtime"  # what OpenAI answers a browser that offers it
SHUTDOWN_CLOSE = 1012  # service restart: reconnect (to another replica)
GOING_AWAY = 1001


def caller_headers(websocket: WebSocket) -> Headers:
    """The handshake's headers, with a subprotocol's key as the Authorization header where none is sent."""
    offered = websocket.scope.get("subprotocols") or []
    key = next((p[len(KEY_SUBPROTOCOL):] for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)
    if key is None or bearer_token(websocket.headers):
        return websocket.headers
    return Headers(raw=[*websocket.headers.raw, (b"authorization", f"Bearer {key}".encode())])


def model_of(websocket: WebSocket) -> str:
    query = websocket.query_params
    model = query.get("model") or query.get("deployment")
    if not model:
        raise bad_request("connect with ?model=<a realtime model>", "model", "missing_model")
    return model


async def realtime(websocket: WebSocket) -> None:
    state: GatewayState = websocket.app.state.pitstop
    draft = OutcomeDraft(endpoint=ENDPOINT)  # the connection's row, written where it is refused
    with state.drain.track():
        try:
            caller, upstream = await _admit(state, websocket, draft)
        except APIError as error:
            await _deny(state, websocket, draft, error)
            return
        await _serve(state, websocket, caller, upstream)


ROUTES = [WebSocketRoute(path, realtime) for path in PATHS]


async def _admit(state: GatewayState, websocket: WebSocket, draft: OutcomeDraft) -> tuple[Caller, Upstream]:
    headers = caller_headers(websocket)
    draft.caller = caller = await state.auth.authenticate(headers)
    model = model_of(websocket)
    draft.route = Route(None, model)
    caller.check_model(model)
    check_realtime_model(state, model)
    draft.admission = await state.admit(caller)
    upstream = await open_upstream(state, model, headers)
    return caller, upstream


async def _deny(state: GatewayState, websocket: WebSocket, draft: OutcomeDraft, error: APIError) -> None:
    """OpenAI's error before the upgrade (the denial response); where the server cannot send one, an `error`
    event on the accepted socket, then close 1008."""
    draft.fail(error.status, error.message)
    draft.extra["code"] = error.code
    state.recorder.finish(draft)
    try:
        await websocket.send_denial_response(error.response())
    except RuntimeError:  # the server lacks the websocket.http.response extension
        await websocket.accept()
        await websocket.send_json({"type": "error", **error.body()})
        await websocket.close(1008, (error.code or "refused")[:120])


async def _serve(state: GatewayState, websocket: WebSocket, caller: Caller, upstream: Upstream) -> None:
    metrics = state.metrics
    model = upstream.model
    try:
        prices = await asyncio.to_thread(realtime_prices, upstream.deployment)  # litellm's map, read once
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in offered else None,
                               headers=[(b"x-pitstop-model", model.encode()),
                                        (b"x-pitstop-deployment", upstream.deployment.name.encode())])
    except BaseException:
        await upstream.connection.close(GOING_AWAY)
        raise
    session = RealtimeSession(state, websocket, caller, upstream, prices)
    metrics.realtime_sessions.labels(model).inc()
    metrics.realtime_open.labels(model).inc()
    upstream.deployment.outstanding += 1  # balancing counts open sessions as calls in flight
    try:
        await session.run()
    except asyncio.CancelledError:
        if state.drain.absorb() is None:
            await asyncio.shield(session.end(SessionEnded(1000, "the client left"), GOING_AWAY))
            raise
        await session.end(SessionEnded(SHUTDOWN_CLOSE, "the gateway is shutting down"), GOING_AWAY)
    except Exception:
        log.exception("realtime session %s failed inside the gateway", session.id)
        with contextlib.suppress(Exception):
            await session.end(SessionEnded(1011, "internal error"), GOING_AWAY)
    finally:
        upstream.deployment.outstanding -= 1
        metrics.realtime_open.labels(model).dec()
