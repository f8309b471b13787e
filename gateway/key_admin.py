"""API keys over HTTP, for the master key only: what `pitstop keys` does, plus changing a key's limits,
so a team's tooling can issue and retire keys without a shell on the gateway.

    POST   /v1/keys         {"name", "rpm_limit"?, "tpm_limit"?, "budget_usd"?, "budget_period"?, "models"?,
                             "priority"?, "team_id"?, "expires_at"? | "duration"?, "mcp_servers"?}
                            -> 201, the secret once
    GET    /v1/keys         every key (no secrets), with its spend (this budget period's too)
    GET    /v1/keys/{id}
    PATCH  /v1/keys/{id}    any of rpm_limit, tpm_limit, budget_usd, budget_period, models, priority,
                            expires_at or duration (null lifts it), team_id (null: no team)
    POST   /v1/keys/{id}/rotate   a new secret (gateway/key_rotation.py)

A key of a team (/v1/teams, gateway/team_admin.py) may not name a model its team may not use.
    DELETE /v1/keys/{id}    revokes it

`expires_at` is Unix seconds, `duration` LiteLLM's "30d" / "12h" / "90m" from now (gateway/key_expiry.py).
Each change is written to the audit log in its transaction (gateway/audit_endpoints.py).

A change reaches this replica's next request at once; other replicas hear of it through Redis
(gateway/key_events.py) where `redis_url` is set, else within their key cache's lifetime (10 s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.server.errors import APIError, bad_request, not_found
from engine.server.json_body import read_json
from gateway.audit_actor import admin_actor
from gateway.key_expiry import with_expiry
from gateway.limits.periods import current_period, period_end
from gateway.state import GatewayState
from gateway.team_limits import TeamLimits
from storage.keys import LIMITS
from storage.models import ApiKey


def _state(request: Request) -> GatewayState:
    return request.app.state.pitstop


def require_master(state: GatewayState, request: Request, what: str = "managing keys") -> None:
    if state.settings.auth.master_key is None:
        raise APIError(403, f"{what} over HTTP needs a master key (auth.master_key in the config)",
                       code="master_key_required")
    if not state.auth.is_master(request.headers):
        raise APIError(401, f"{what} needs the master key: send 'Authorization: Bearer <master key>'",
                       code="invalid_api_key")


def key_object(key: ApiKey, default_period: str | None = None) -> dict:
    """The key as the API shows it; `spent_usd` is its lifetime spend, and with a budget period (its own,
    else `limits.default_budget_period`) `period_spent_usd` is what the current period has spent."""
    period = key.budget_period or default_period
    start = current_period(period)  # type: ignore[arg-type]
    return {"id": key.id, "object": "api_key", "name": key.name, "prefix": key.prefix,
            "created_at": int(key.created_at.timestamp()),
            "revoked_at": int(key.revoked_at.timestamp()) if key.revoked_at else None,
            "rpm_limit": key.rpm_limit, "tpm_limit": key.tpm_limit, "budget_usd": key.budget_usd,
            "spent_usd": key.spent_usd,
            "budget_period": key.budget_period,
            "period_spent_usd": None if start is None else key.period_spent_usd if key.period_start == start else 0.0,
            "period_renews_at": None if start is None else period_end(period, start),  # type: ignore[arg-type]
            "models": key.models, "priority": key.priority, "team_id": key.team_id, "mcp_servers": key.mcp_servers,
            "expires_at": key.expires_at, "expired": key.expires_at is not None and key.expires_at <= time.time(),
            # a rotated-away secret's grace (gateway/key_rotation.py): accepted until then
            "previous_secret_valid_until": key.previous_valid_until if key.previous_key_hash else None}


async def admin_body(request: Request, state: GatewayState, allowed: tuple[str, ...]) -> dict[str, Any]:
    """An admin call's JSON object body; a 400 for anything else, or for a field outside `allowed`."""
    body = await read_json(request, state.settings.server.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r} (known: {', '.join(allowed)})", unknown[0], "unknown_field")
    return body


async def _body(request: Request, state: GatewayState, allowed: tuple[str, ...]) -> dict[str, Any]:
    body = check_limit_fields(state, with_expiry(await admin_body(request, state, (*allowed, "duration"))))
    if body.get("team_id") is not None and (not isinstance(body["team_id"], str) or not body["team_id"]):
        raise bad_request("'team_id' must be a team's id (a string), or null", "team_id", "invalid_type")
    return body


def check_limit_fields(state: GatewayState, body: dict[str, Any]) -> dict[str, Any]:
    """`body`, its limits' types checked (a 400 naming the field), its models known here."""
    for name in ("rpm_limit", "tpm_limit"):
        if body.get(name) is not None and type(body[name]) is not int:
            raise bad_request(f"'{name}' must be an integer", name, "invalid_type")
    for name in ("budget_usd", "priority"):
        if body.get(name) is not None and (isinstance(body[name], bool) or not isinstance(body[name], int | float)):
            raise bad_request(f"'{name}' must be a number", name, "invalid_type")
    models = body.get("models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise bad_request("'models' must be a list of model and route group names", "models", "invalid_type")
        unknown_models = [m for m in models if not state.settings.serves(m)]
        if unknown_models:  # a typo would make a key that can use nothing
            raise bad_request(f"'models': {unknown_models[0]!r} is neither a model nor a route group here",
                              "models", "invalid_value")
    servers = body.get("mcp_servers")
    if servers is not None:  # the MCP servers of `mcp_servers:` it may reach at /mcp (gateway/mcp_gateway.py)
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise bad_request("'mcp_servers' must be a list of MCP server names", "mcp_servers", "invalid_type")
        configured = {s.name for s in state.settings.mcp_servers}
        if unknown_servers := [s for s in servers if s not in configured]:
            raise bad_request(f"'mcp_servers': {unknown_servers[0]!r} is not an MCP server of the config's "
                              "mcp_servers", "mcp_servers", "invalid_value")
    return body


async def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A key store call off the event loop; its ValueError (a limit that cannot be met) is a 400 naming
    the field, its KeyError an unknown key."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except KeyError as exc:
        raise not_found(str(exc.args[0]), None, "key_not_found") from None
    except ValueError as exc:
        message = str(exc)
        raise bad_request(message, next((name for name in LIMITS if message.startswith(name)), None),
                          "invalid_value") from None


async def create_key(request: Request) -> Response:
    state = _state(request)
    require_master(state, request)
    body = await _body(request, state, ("name", *LIMITS))
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("'name' is required: a non-empty string", "name", "invalid_value")
    await _within_team(state, body.get("team_id"), body.get("models"), body.get("mcp_servers"))
    key_id, secret = await _call(state.keys.create, name, body.get("rpm_limit"), body.get("budget_usd"),
                                 body.get("models"), body.get("priority"), body.get("budget_period"),
                                 body.get("tpm_limit"), body.get("team_id"), body.get("expires_at"),
                                 admin_actor(request), body.get("mcp_servers"))
    key = await _call(state.keys.get, key_id)
    return JSONResponse({**_shown(state, key), "secret": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    state = _state(request)
    require_master(state, request)
    keys = await _call(state.keys.list)
    return JSONResponse({"object": "list", "data": [_shown(state, key) for key in keys]})


async def get_key(request: Request) -> Response:
    state = _state(request)
    require_master(state, request)
    return JSONResponse(_shown(state, await _found(state, request.path_params["key_id"])))


async def update_key(request: Request) -> Response:
    state = _state(request)
    require_master(state, request)
    key_id = request.path_params["key_id"]
    body = await _body(request, state, LIMITS)
    found = await _found(state, key_id)
    await _within_team(state, body.get("team_id", found.team_id), body.get("models", found.models),
                       body.get("mcp_servers", found.mcp_servers))
    key = await _call(state.keys.update, key_id, admin_actor(request), **body)
    await forget_cached(state, key_id)
    return JSONResponse(_shown(state, key))


async def revoke_key(request: Request) -> Response:
    state = _state(request)
    require_master(state, request)
    key_id = request.path_params["key_id"]
    await _found(state, key_id)
    key = await _call(state.keys.revoke, key_id, admin_actor(request))
    await forget_cached(state, key_id)
    return JSONResponse(_shown(state, key))


def _shown(state: GatewayState, key: ApiKey) -> dict:
    return key_object(key, state.settings.limits.default_budget_period)


async def forget_cached(state: GatewayState, subject: str) -> None:
    """This replica's cached lookups of the key (or with "team:<id>", of the team's keys) go at once; other
    replicas' too where Redis tells them."""
    state.auth.forget(subject)
    if state.key_events is not None:
        await state.key_events.publish(subject)


async def _within_team(state: GatewayState, team_id: str | None, models: list[str] | None,
                       mcp_servers: list[str] | None = None) -> None:
    """A 400 naming `models` (or `mcp_servers`) for a key that would name a model (an MCP server) its team
    may not use (the team's list bounds it anyway; saying so when the key is made beats a key that fails
    later), or `team_id` for a team that is not there."""
    if team_id is None or state.teams is None:
        return
    team = await asyncio.to_thread(state.teams.get, team_id)
    if team is None:
        raise bad_request(f"'team_id': no team {team_id!r}", "team_id", "invalid_value")
    outside = [m for m in models or () if not TeamLimits.of(team).may_use(m)]
    if outside:
        raise bad_request(f"'models': {outside[0]!r} is not among the models of team {team.name!r} "
                          f"({', '.join(team.models or ())})", "models", "invalid_value")
    if team.mcp_servers is not None and (beyond := [s for s in mcp_servers or () if s not in team.mcp_servers]):
        raise bad_request(f"'mcp_servers': {beyond[0]!r} is not among the MCP servers of team {team.name!r} "
                          f"({', '.join(team.mcp_servers)})", "mcp_servers", "invalid_value")


async def _found(state: GatewayState, key_id: str) -> ApiKey:
    key = await _call(state.keys.get, key_id)
    if key is None:
        raise not_found(f"no API key {key_id!r}", None, "key_not_found")
    return key
