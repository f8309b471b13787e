"""The admin audit log over HTTP, for the master key, as OpenAI's Admin API serves it:

    GET /v1/organization/audit_logs   ?event_types[]=api_key.created&resource_ids[]=<id>
                                      &effective_at[gte]=<unix s>&limit=20&after=<id>&before=<id>

newest first, each event `{"id", "object": "organization.audit_log", "type", "effective_at", "actor",
"<type>": {its payload}}`, the page with `first_id`, `last_id` and `has_more` (the SDK's
`client.admin.organization.audit_logs.list`). The events: api_key.created / updated / deleted (revoked) /
rotated, team.created / updated / deleted, webhook_endpoint.created / updated / deleted / secret_rotated,
config.reloaded. A key's, team's or webhook endpoint's event is written in the change's transaction
(storage/audit.py); never a secret."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.server.errors import APIError, bad_request
from gateway.audit_actor import admin_actor
from gateway.key_admin import require_master
from gateway.state import GatewayState
from storage.audit import AuditQuery
from storage.models import AuditLog

log = logging.getLogger("pitstop.gateway")
_BOUNDS = ("gt", "gte", "lt", "lte")


def audit_object(row: AuditLog) -> dict[str, Any]:
    return {"id": row.public_id, "object": "organization.audit_log", "type": row.type,
            "effective_at": row.effective_at, "actor": row.actor, row.type: row.payload}


async def record_admin_event(state: GatewayState, request: Request, type_: str, payload: dict[str, Any]) -> None:
    """An event of a change kept outside the database (a config reload), written after it; a failed write
    is logged, the change having happened."""
    assert state.audit is not None
    try:
        await asyncio.to_thread(state.audit.record, admin_actor(request), type_, None, payload)
    except Exception:
        log.exception("could not write the audit log's %s event", type_)


def _listed(request: Request, name: str) -> list[str]:
    return request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)


def _query(request: Request) -> AuditQuery:
    params = request.query_params
    bounds: dict[str, int] = {}
    for bound in _BOUNDS:
        text = params.get(f"effective_at[{bound}]")
        if text is not None:
            if not text.lstrip("-").isdigit():
                raise bad_request(f"'effective_at[{bound}]' must be Unix seconds, got {text!r}",
                                  f"effective_at[{bound}]", "invalid_value")
            bounds[bound] = int(text)
    limit_text = params.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise bad_request(f"'limit' must be between 1 and 100, got {limit_text!r}", "limit", "invalid_value")
    if params.get("after") is not None and params.get("before") is not None:
        raise bad_request("give 'after' or 'before', not both", "before", "invalid_value")
    return AuditQuery(tuple(_listed(request, "event_types")), tuple(_listed(request, "resource_ids")), bounds,
                      int(limit_text), params.get("after"), params.get("before"))


async def list_audit_logs(request: Request) -> Response:
    state: GatewayState = request.app.state.pitstop
    if state.settings.auth.master_key is not None and not state.auth.is_master(request.headers):
        await state.auth.authenticate(request.headers)  # a 401 for a key that is none (or is expired)
        raise APIError(403, "reading the audit log needs the master key; an API key may not",
                       code="insufficient_permissions")
    require_master(state, request, "reading the audit log")
    assert state.audit is not None
    query = _query(request)
    try:
        rows, more = await asyncio.to_thread(state.audit.list, query)
    except ValueError as exc:  # a cursor that is no audit log id
        field = "after" if query.after is not None else "before"
        raise bad_request(str(exc), field, "invalid_value") from None
    data = [audit_object(row) for row in rows]
    return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": more})


ROUTES = [Route("/v1/organization/audit_logs", list_audit_logs, methods=["GET"])]
