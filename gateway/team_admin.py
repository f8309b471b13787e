"""Teams over HTTP, for the master key only: a platform team gives a team a budget and limits, and the
team's keys (`team_id` on /v1/keys) share them, each key bounded by its own limits too.

    POST   /v1/teams        {"name", "rpm_limit"?, "tpm_limit"?, "budget_usd"?, "budget_period"?, "models"?,
                             "priority"?, "metadata"?, "mcp_servers"?} -> 201, the team
    GET    /v1/teams        every team, with its spend (this budget period's too) and its active keys' count
    GET    /v1/teams/{id}
    PATCH  /v1/teams/{id}   any of those fields (null lifts a limit)
    DELETE /v1/teams/{id}   deleted, as OpenAI answers a deletion; a 409 `team_has_keys` while an active key
                            belongs to it (revoke the keys, or move them with PATCH /v1/keys/{id}, first)

A change reaches every key of the team on this replica's next request, and on the others' through Redis
(gateway/key_events.py, "team:<id>") where `redis_url` is set, else within their key cache's 10 s. Each
change is written to the audit log in its transaction (gateway/audit_endpoints.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.server.errors import APIError, bad_request, not_found
from gateway.audit_actor import admin_actor
from gateway.key_admin import admin_body, check_limit_fields, forget_cached, require_master
from gateway.limits.periods import current_period, period_end
from gateway.metadata import checked_metadata
from gateway.state import GatewayState
from gateway.team_limits import SUBJECT_PREFIX
from storage.models import Team
from storage.teams import TEAM_FIELDS, TeamHasKeysError, TeamStore

WHAT = "managing teams"


def team_object(team: Team, keys: int) -> dict[str, Any]:
    """The team as the API shows it; `spent_usd` is its keys' lifetime spend together, and with a budget
    period `period_spent_usd` is the current period's."""
    start = current_period(team.budget_period)  # type: ignore[arg-type]
    return {"id": team.id, "object": "team", "name": team.name, "created_at": int(team.created_at.timestamp()),
            "rpm_limit": team.rpm_limit, "tpm_limit": team.tpm_limit, "budget_usd": team.budget_usd,
            "budget_period": team.budget_period, "spent_usd": team.spent_usd,
            "period_spent_usd": None if start is None else team.period_spent_usd if team.period_start == start else 0.0,
            "period_renews_at": None if start is None else period_end(team.budget_period, start),  # type: ignore[arg-type]
            "models": team.models, "priority": team.priority, "metadata": team.metadata_ or {}, "keys": keys,
            "mcp_servers": team.mcp_servers}


def _teams(request: Request) -> tuple[GatewayState, TeamStore]:
    state: GatewayState = request.app.state.pitstop
    require_master(state, request, WHAT)
    assert state.teams is not None
    return state, state.teams


async def _body(request: Request, state: GatewayState) -> dict[str, Any]:
    body = check_limit_fields(state, await admin_body(request, state, TEAM_FIELDS))
    if "name" in body and (not isinstance(body["name"], str) or not body["name"].strip()):
        raise bad_request("'name' must be a non-empty string", "name", "invalid_value")
    if "metadata" in body:
        body["metadata"] = checked_metadata(body["metadata"])
    return body


async def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A team store call off the event loop: its ValueError is a 400 naming the field, its KeyError a 404,
    a team with keys a 409."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except KeyError as exc:
        raise not_found(str(exc.args[0]), None, "team_not_found") from None
    except TeamHasKeysError as exc:
        raise APIError(409, str(exc), None, "team_has_keys") from None
    except ValueError as exc:
        message = str(exc)
        raise bad_request(message, next((name for name in TEAM_FIELDS if message.startswith(name)), None),
                          "invalid_value") from None


async def _shown(teams: TeamStore, team: Team) -> dict[str, Any]:
    counts = await _call(teams.key_counts)
    return team_object(team, counts.get(team.id, 0))


async def create_team(request: Request) -> Response:
    state, teams = _teams(request)
    body = await _body(request, state)
    if "name" not in body:
        raise bad_request("'name' is required: a non-empty string", "name", "invalid_value")
    team = await _call(teams.create, **body, actor=admin_actor(request))
    return JSONResponse(team_object(team, 0), status_code=201)


async def list_teams(request: Request) -> Response:
    _, teams = _teams(request)
    listed, counts = await _call(teams.list), await _call(teams.key_counts)
    return JSONResponse({"object": "list", "data": [team_object(team, counts.get(team.id, 0)) for team in listed]})


async def get_team(request: Request) -> Response:
    _, teams = _teams(request)
    team = await _call(teams.get, request.path_params["team_id"])
    if team is None:
        raise not_found(f"no team {request.path_params['team_id']!r}", None, "team_not_found")
    return JSONResponse(await _shown(teams, team))


async def update_team(request: Request) -> Response:
    state, teams = _teams(request)
    team_id = request.path_params["team_id"]
    body = await _body(request, state)
    team = await _call(teams.update, team_id, admin_actor(request), **body)
    await forget_cached(state, SUBJECT_PREFIX + team_id)  # its keys' cached callers carry its old limits
    return JSONResponse(await _shown(teams, team))


async def delete_team(request: Request) -> Response:
    state, teams = _teams(request)
    team_id = request.path_params["team_id"]
    await _call(teams.delete, team_id, admin_actor(request))
    await forget_cached(state, SUBJECT_PREFIX + team_id)  # its revoked keys' too, were any still cached
    return JSONResponse({"id": team_id, "object": "team.deleted", "deleted": True})


ROUTES = [
    Route("/v1/teams", create_team, methods=["POST"]),
    Route("/v1/teams", list_teams, methods=["GET"]),
    Route("/v1/teams/{team_id}", get_team, methods=["GET"]),
    Route("/v1/teams/{team_id}", update_team, methods=["PATCH"]),
    Route("/v1/teams/{team_id}", delete_team, methods=["DELETE"]),
]
