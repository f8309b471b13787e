"""Rotating a key's secret over HTTP, for the master key:

    POST /v1/keys/{id}/rotate   {"grace_period_s"?: 0} -> the key with its new secret, shown once

LiteLLM calls it regenerate (its `grace_period`). The key keeps its id, limits, spend and team; only the
secret changes, its hash alone kept. The old secret keeps working until the grace ends (0: refused at
once). This replica forgets its cached lookups at once, the others through Redis (gateway/key_events.py)
where `redis_url` is set, else within their key cache's 10 s; each checks the grace's end at every request
(gateway/auth.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.server.errors import bad_request
from gateway.audit_actor import admin_actor
from gateway.key_admin import _call, _found, _shown, _state, admin_body, forget_cached, require_master


async def rotate_key(request: Request) -> Response:
    state = _state(request)
    require_master(state, request)
    key_id = request.path_params["key_id"]
    sent = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    body = await admin_body(request, state, ("grace_period_s",)) if sent else {}  # no body: grace 0
    grace = body.get("grace_period_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise bad_request("'grace_period_s' must be a whole number of seconds >= 0", "grace_period_s",
                          "invalid_value")
    await _found(state, key_id)
    key, secret = await _call(state.keys.rotate, key_id, grace, admin_actor(request))
    await forget_cached(state, key_id)
    return JSONResponse({**_shown(state, key), "secret": secret})
