"""Stored chat completions over HTTP (gateway/stored_completions.py), in OpenAI's shape:

    GET    /v1/chat/completions                   the key's, oldest first (`limit`, `order`, `after`,
                                                  `model`, `metadata[key]=value`)
    GET    /v1/chat/completions/{id}
    POST   /v1/chat/completions/{id}              {"metadata": {...}}: its metadata, replaced
    DELETE /v1/chat/completions/{id}
    GET    /v1/chat/completions/{id}/messages     the messages that asked for it (`limit`, `order`, `after`)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.server.errors import bad_request
from gateway.key_admin import admin_body
from gateway.metadata import checked_metadata
from gateway.responses_api import page_params
from gateway.state import GatewayState
from gateway.stored_completions import db_call, public, stored_messages

_METADATA_PARAM = re.compile(r"metadata\[(.+)\]")


def _state(request: Request) -> GatewayState:
    return request.app.state.pitstop


async def _key(request: Request) -> str | None:
    return (await _state(request).auth.authenticate(request.headers)).key_id


def _page(data: list[dict], more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


async def list_completions(request: Request) -> Response:
    state, key_id = _state(request), await _key(request)
    params = page_params(request.query_params, default_order="asc")
    limit, descending, after = params.limit, params.descending, params.after
    metadata = {m.group(1): value for name, value in request.query_params.multi_items()
                if (m := _METADATA_PARAM.fullmatch(name))}
    checked_metadata(metadata)
    if after is not None:
        await state.stored_completions.find(after, key_id)  # a 404 for a cursor that names none of the key's
    rows, more = await db_call(state.stored_completions.store.page, key_id, datetime.now(UTC), limit, descending, after,
                           request.query_params.get("model"), metadata)
    return JSONResponse(_page([public(row) for row in rows], more))


async def retrieve_completion(request: Request) -> Response:
    row = await _state(request).stored_completions.find(request.path_params["completion_id"], await _key(request))
    return JSONResponse(public(row))


async def update_completion(request: Request) -> Response:
    state, key_id = _state(request), await _key(request)
    body = await admin_body(request, state, ("metadata",))
    if "metadata" not in body:
        raise bad_request("'metadata' is required (it is all that can be changed)", "metadata",
                          "missing_required_parameter")
    metadata = checked_metadata(body["metadata"])
    row = await state.stored_completions.find(request.path_params["completion_id"], key_id)
    await db_call(state.stored_completions.store.set_metadata, row["id"], metadata)
    return JSONResponse(public({**row, "metadata": metadata}))


async def delete_completion(request: Request) -> Response:
    state, key_id = _state(request), await _key(request)
    row = await state.stored_completions.find(request.path_params["completion_id"], key_id)
    await db_call(state.stored_completions.store.delete, row["id"])
    return JSONResponse({"object": "chat.completion.deleted", "id": row["id"], "deleted": True})


async def completion_messages(request: Request) -> Response:
    state, key_id = _state(request), await _key(request)
    params = page_params(request.query_params, default_order="asc")
    limit, descending, after = params.limit, params.descending, params.after
    row = await state.stored_completions.find(request.path_params["completion_id"], key_id)
    messages = stored_messages(row)
    if descending:
        messages.reverse()
    if after is not None:
        ids = [m["id"] for m in messages]
        if after not in ids:
            raise bad_request(f"'after': no message {after!r} in this completion", "after", "invalid_value")
        messages = messages[ids.index(after) + 1:]
    return JSONResponse(_page(messages[:limit], len(messages) > limit))


ROUTES = [
    Route("/v1/chat/completions", list_completions, methods=["GET"]),
    Route("/v1/chat/completions/{completion_id}", retrieve_completion, methods=["GET"]),
    Route("/v1/chat/completions/{completion_id}", update_completion, methods=["POST"]),
    Route("/v1/chat/completions/{completion_id}", delete_completion, methods=["DELETE"]),
    Route("/v1/chat/completions/{completion_id}/messages", completion_messages, methods=["GET"]),
]
