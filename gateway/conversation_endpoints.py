"""/v1/conversations: OpenAI's Conversations API endpoints, as the SDKs call them (gateway/conversations.py
holds the policy)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway.auth import Caller
from gateway.conversations import Conversations
from gateway.responses_api import listed_item
from gateway.state import GatewayState


async def _context(request: Request) -> tuple[Conversations, Caller]:
    state: GatewayState = request.app.state.pitstop
    return state.conversations, await state.auth.authenticate(request.headers)


async def _body(request: Request) -> object:
    state: GatewayState = request.app.state.pitstop
    return await read_json(request, state.settings.server.max_body_bytes)


async def create_conversation(request: Request) -> Response:
    conversations, caller = await _context(request)
    return SafeJSONResponse(await conversations.create(await _body(request), caller.key_id))


async def retrieve_conversation(request: Request) -> Response:
    conversations, caller = await _context(request)
    return SafeJSONResponse(await conversations.find(request.path_params["conversation_id"], caller.key_id))


async def update_conversation(request: Request) -> Response:
    conversations, caller = await _context(request)
    return SafeJSONResponse(await conversations.update(request.path_params["conversation_id"], await _body(request),
                                                       caller.key_id))


async def delete_conversation(request: Request) -> Response:
    conversations, caller = await _context(request)
    conversation_id = request.path_params["conversation_id"]
    await conversations.delete(conversation_id, caller.key_id)
    return SafeJSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


async def list_items(request: Request) -> Response:
    """A page of the conversation's items (`limit`, `order` (desc by default), `after`; `include` is
    ignored: the gateway keeps nothing it could add)."""
    conversations, caller = await _context(request)
    return SafeJSONResponse(await conversations.page(request.path_params["conversation_id"], caller.key_id,
                                                     request.query_params))


async def create_items(request: Request) -> Response:
    conversations, caller = await _context(request)
    added = await conversations.add(request.path_params["conversation_id"], await _body(request), caller.key_id)
    data = [listed_item(item) for item in added]
    return SafeJSONResponse({"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"],
                             "has_more": False})


async def retrieve_item(request: Request) -> Response:
    conversations, caller = await _context(request)
    path = request.path_params
    return SafeJSONResponse(listed_item(await conversations.item(path["conversation_id"], path["item_id"],
                                                                 caller.key_id)))


async def delete_item(request: Request) -> Response:
    conversations, caller = await _context(request)
    path = request.path_params
    return SafeJSONResponse(await conversations.delete_item(path["conversation_id"], path["item_id"], caller.key_id))


ROUTES = [
    Route("/v1/conversations", create_conversation, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}", retrieve_conversation, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}", update_conversation, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}", delete_conversation, methods=["DELETE"]),
    Route("/v1/conversations/{conversation_id}/items", list_items, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}/items", create_items, methods=["POST"]),
    Route("/v1/conversations/{conversation_id}/items/{item_id}", retrieve_item, methods=["GET"]),
    Route("/v1/conversations/{conversation_id}/items/{item_id}", delete_item, methods=["DELETE"]),
]
