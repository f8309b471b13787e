"""/v1/batches: OpenAI's Batch API endpoints, as the SDKs call them (gateway/batches.py holds the policy)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway.auth import Caller
from gateway.batches import Batches
from gateway.files import _db
from gateway.responses_api import page_params
from gateway.state import GatewayState


async def _context(request: Request) -> tuple[Batches, Caller]:
    state: GatewayState = request.app.state.pitstop
    return state.batches, await state.auth.authenticate(request.headers)


async def create_batch(request: Request) -> Response:
    batches, caller = await _context(request)
    state: GatewayState = request.app.state.pitstop
    return SafeJSONResponse(await batches.create(await read_json(request, state.settings.server.max_body_bytes), caller))


async def retrieve_batch(request: Request) -> Response:
    batches, caller = await _context(request)
    return SafeJSONResponse(await batches.find(request.path_params["batch_id"], caller.key_id))


async def cancel_batch(request: Request) -> Response:
    batches, caller = await _context(request)
    return SafeJSONResponse(await batches.cancel(request.path_params["batch_id"], caller.key_id))


async def list_batches(request: Request) -> Response:
    """GET /v1/batches: the key's batches, newest first (`limit`, `after`)."""
    batches, caller = await _context(request)
    params = page_params(request.query_params)
    rows, more = await _db(batches.store.page, caller.key_id, params.limit, params.after)
    data = [row["batch"] for row in rows]
    return SafeJSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more})


ROUTES = [
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
