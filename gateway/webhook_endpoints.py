"""Webhook endpoints over HTTP, in OpenAI's shape (the openai SDK's `client.webhooks.create/list/retrieve/
update/delete/rotate_secret/test` and `client.webhooks.event_types.list()`):

    POST   /v1/webhook_endpoints                      {"name", "url", "event_types"} -> the endpoint, with its
                                                      `signing_secret` (shown once)
    GET    /v1/webhook_endpoints                      newest first (`limit`, `after`)
    GET    /v1/webhook_endpoints/{id}
    POST   /v1/webhook_endpoints/{id}                 any of name, url, event_types
    DELETE /v1/webhook_endpoints/{id}                 with the deliveries still on their way to it
    POST   /v1/webhook_endpoints/{id}/rotate_secret   {"keep_old_secret_active_for_24_hours"?} -> a new secret
    POST   /v1/webhook_endpoints/{id}/test            {"event_type"}: a sample event, sent now; its HTTP status
    GET    /v1/webhook_event_types                    the event types Pitstop sends

Who may: the master key; on an open gateway (no master key, keys not required), anyone who reaches it,
as for every other setting there. An endpoint's URL may be http:// (a receiver beside the gateway); it is
held to the gateway's outbound policy (`outbound:`, gateway/outbound_policy.py): a host it refuses is a
400 `url_not_allowed` here, and its addresses are checked on every delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.server.errors import bad_request, not_found
from gateway.audit_actor import admin_actor
from gateway.db_calls import db_call_or_503
from gateway.key_admin import admin_body, require_master
from gateway.outbound_policy import UrlRefused, url_not_allowed
from gateway.responses_api import page_params
from gateway.state import GatewayState
from gateway.webhooks import new_secret
from storage.webhooks import EVENT_TYPES, new_id

MAX_NAME, MAX_URL = 256, 2048
KEEP_OLD_SECRET_S = 24 * 3600.0


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.pitstop
    auth = state.settings.auth
    if auth.master_key is not None or auth.require_keys:
        require_master(state, request, "managing webhook endpoints")
    return state


_db = db_call_or_503("webhook endpoints", "webhooks_unavailable")


def endpoint_object(row: dict[str, Any], with_secret: bool = False) -> dict[str, Any]:
    secret: str = row["secret"]
    shown = {"id": row["id"], "object": "webhook_endpoint", "created_at": int(row["created_at"].timestamp()),
             "updated_at": int(row["updated_at"].timestamp()), "name": row["name"], "url": row["url"],
             "event_types": row["event_types"], "signing_secret_hint": f"whsec_...{secret[-4:]}"}
    return {**shown, "signing_secret": secret} if with_secret else shown


def _fields(body: dict[str, Any], required: bool) -> dict[str, Any]:
    """The endpoint's name, url and event types from a create or update body, checked."""
    values: dict[str, Any] = {}
    for name in ("name", "url", "event_types"):
        if body.get(name) is None:
            if required:
                raise bad_request(f"'{name}' is required", name, "missing_required_parameter")
            continue
        values[name] = body[name]
    name = values.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= MAX_NAME):
        raise bad_request(f"'name' must be a string of 1 to {MAX_NAME} characters", "name", "invalid_value")
    url = values.get("url")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) and len(url) <= MAX_URL else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request("'url' must be an http:// or https:// URL with a host", "url", "invalid_value")
    types = values.get("event_types")
    if types is not None:
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise bad_request("'event_types' must be a non-empty list of event types", "event_types", "invalid_type")
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise bad_request(f"'event_types': Pitstop does not send {unknown[0]!r} (it sends: "
                              f"{', '.join(EVENT_TYPES)})", "event_types", "invalid_value")
        values["event_types"] = list(dict.fromkeys(types))
    return values


def _allowed(state: GatewayState, values: dict[str, Any]) -> dict[str, Any]:
    """The values, their URL's host allowed by the outbound policy (a 400 `url_not_allowed` otherwise)."""
    if "url" in values:
        try:
            state.outbound().check_url(values["url"])
        except UrlRefused as refused:
            raise url_not_allowed(refused, "url") from None
    return values


async def _endpoint(state: GatewayState, endpoint_id: str) -> dict[str, Any]:
    row = await _db(state.webhooks.store.endpoint, endpoint_id)
    if row is None:
        raise not_found(f"no webhook endpoint {endpoint_id!r}", "webhook_endpoint_id")
    return row


async def create_endpoint(request: Request) -> Response:
    state = _state(request)
    values = _allowed(state, _fields(await admin_body(request, state, ("name", "url", "event_types")), required=True))
    now = datetime.now(UTC)
    row = {"id": new_id("we"), "created_at": now, "updated_at": now, "secret": new_secret(),
           "previous_secret": None, "previous_secret_until": None, **values}
    await _db(state.webhooks.store.add_endpoint, row, admin_actor(request))
    return JSONResponse(endpoint_object(row, with_secret=True))


async def list_endpoints(request: Request) -> Response:
    state = _state(request)
    params = page_params(request.query_params)
    rows = await _db(state.webhooks.store.endpoints)
    if params.after is not None:
        ids = [row["id"] for row in rows]
        if params.after not in ids:
            raise bad_request(f"'after': no webhook endpoint {params.after!r}", "after", "invalid_value")
        rows = rows[ids.index(params.after) + 1:]
    page = [endpoint_object(row) for row in rows[:params.limit]]
    return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None, "has_more": len(rows) > params.limit})


async def retrieve_endpoint(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(endpoint_object(await _endpoint(state, request.path_params["endpoint_id"])))


async def update_endpoint(request: Request) -> Response:
    state = _state(request)
    endpoint_id = request.path_params["endpoint_id"]
    values = _allowed(state, _fields(await admin_body(request, state, ("name", "url", "event_types")), required=False))
    row = await _endpoint(state, endpoint_id)
    if any(row[name] != value for name, value in values.items()):  # an unchanged update leaves updated_at
        event = ("webhook_endpoint.updated", {"id": endpoint_id, "changes_requested": dict(values),
                                              "previous": {name: row[name] for name in values}})
        values["updated_at"] = datetime.now(UTC)
        await _db(state.webhooks.store.change_endpoint, endpoint_id, values, admin_actor(request), event)
    return JSONResponse(endpoint_object({**row, **values}))


async def delete_endpoint(request: Request) -> Response:
    state = _state(request)
    endpoint_id = request.path_params["endpoint_id"]
    if not await _db(state.webhooks.store.delete_endpoint, endpoint_id, admin_actor(request)):
        raise not_found(f"no webhook endpoint {endpoint_id!r}", "webhook_endpoint_id")
    return JSONResponse({"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True})


async def rotate_secret(request: Request) -> Response:
    state = _state(request)
    endpoint_id = request.path_params["endpoint_id"]
    body = await admin_body(request, state, ("keep_old_secret_active_for_24_hours",))
    keep = body.get("keep_old_secret_active_for_24_hours", False)
    if not isinstance(keep, bool):
        raise bad_request("'keep_old_secret_active_for_24_hours' must be a boolean",
                          "keep_old_secret_active_for_24_hours", "invalid_type")
    row = await _endpoint(state, endpoint_id)
    now = datetime.now(UTC)
    values = {"secret": new_secret(), "updated_at": now,
              "previous_secret": row["secret"] if keep else None,
              "previous_secret_until": now + timedelta(seconds=KEEP_OLD_SECRET_S) if keep else None}
    event = ("webhook_endpoint.secret_rotated", {"id": endpoint_id, "keep_old_secret_active_for_24_hours": keep})
    await _db(state.webhooks.store.change_endpoint, endpoint_id, values, admin_actor(request), event)
    return JSONResponse(endpoint_object({**row, **values}, with_secret=True))


async def send_test_event(request: Request) -> Response:
    state = _state(request)
    endpoint_id = request.path_params["endpoint_id"]
    event_type = (await admin_body(request, state, ("event_type",))).get("event_type")
    if event_type not in EVENT_TYPES:
        raise bad_request(f"'event_type' must be one of {', '.join(EVENT_TYPES)}", "event_type", "invalid_value")
    row = _allowed(state, await _endpoint(state, endpoint_id))  # allowed when made, perhaps not since a reload
    status, error = await state.webhooks.send_test(row, event_type)
    if status is None:
        raise bad_request(f"the endpoint {row['url']} did not answer: {error}", "url", "webhook_unreachable")
    return JSONResponse({"object": "webhook_endpoint.test", "webhook_endpoint_id": endpoint_id,
                         "event_type": event_type, "status_code": status, "success": True})


async def event_types(request: Request) -> Response:
    _state(request)
    return JSONResponse({"object": "list", "data": list(EVENT_TYPES)})


ROUTES = [
    Route("/v1/webhook_endpoints", create_endpoint, methods=["POST"]),
    Route("/v1/webhook_endpoints", list_endpoints, methods=["GET"]),
    Route("/v1/webhook_endpoints/{endpoint_id}", retrieve_endpoint, methods=["GET"]),
    Route("/v1/webhook_endpoints/{endpoint_id}", update_endpoint, methods=["POST"]),
    Route("/v1/webhook_endpoints/{endpoint_id}", delete_endpoint, methods=["DELETE"]),
    Route("/v1/webhook_endpoints/{endpoint_id}/rotate_secret", rotate_secret, methods=["POST"]),
    Route("/v1/webhook_endpoints/{endpoint_id}/test", send_test_event, methods=["POST"]),
    Route("/v1/webhook_event_types", event_types, methods=["GET"]),
]
