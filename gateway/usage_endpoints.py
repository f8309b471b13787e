"""OpenAI's Usage and Costs APIs over the outcome log, so the dashboards and scripts written for them
(the openai SDK's `client.admin.organization.usage`) read a Pitstop deployment's spend:

    GET /v1/organization/usage/completions   chat, completions, Responses and Messages requests
    GET /v1/organization/usage/embeddings
    GET /v1/organization/usage/moderations
    GET /v1/organization/usage/audio_transcriptions   seconds (transcriptions and translations)
    GET /v1/organization/usage/audio_speeches         characters
    GET /v1/organization/usage/images                 images; `size` and `source` are not kept: null groups
    GET /v1/organization/costs               every request's cost in USD, and what routing saved

Same parameters and pages as OpenAI's (`start_time`, `end_time`, `bucket_width`, `group_by`, `limit`,
`page`, the filters). A Pitstop team (/v1/teams) is what OpenAI calls a project, a set of keys with a
budget and limits of its own: `group_by=project_id` groups by the team of the key that sent each request
(null for keys of none), and `project_ids` keeps those teams' requests. Pitstop has no users: grouping by
them gives one null group, and filtering by them is a 400. What Pitstop adds: `route_group` (and `endpoint` for completions) to group
by, `cache_hits` in every result, and in costs `num_model_requests` and `baseline_amount`, what the
same requests would have cost had their route group sent each to its costliest model (the router's
savings: `baseline_amount - amount`). A cost's `line_item` is a model (Pitstop's name for it).

The master key reads everyone's usage; an API key reads its own; a gateway without a master key and
without required keys (the embedded default) lets anyone read it all. The log is written off the
request path, so a request shows up here about a second after it ends."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.server.errors import APIError, bad_request
from gateway.state import GatewayState
from storage.inserts import describe
from storage.usage import (
    EMBEDDING_ENDPOINTS,
    IMAGE_ENDPOINTS,
    MODERATION_ENDPOINTS,
    SPEECH_ENDPOINTS,
    TEXT_ENDPOINTS,
    TRANSCRIPTION_ENDPOINTS,
    UsageQuery,
    UsageTotals,
    usage,
)

Report = Literal["completions", "embeddings", "moderations", "audio_transcriptions", "audio_speeches", "images",
                 "costs"]
ENDPOINTS: dict[Report, tuple[str, ...] | None] = {
    "completions": TEXT_ENDPOINTS, "embeddings": EMBEDDING_ENDPOINTS, "moderations": MODERATION_ENDPOINTS,
    "audio_transcriptions": TRANSCRIPTION_ENDPOINTS, "audio_speeches": SPEECH_ENDPOINTS, "images": IMAGE_ENDPOINTS,
    "costs": None}
# The unit OpenAI's audio and image reports count (the rollup's `units`, storage/usage.py), in whole ones as OpenAI's.
UNITS: dict[Report, str] = {"audio_transcriptions": "seconds", "audio_speeches": "characters", "images": "images"}

WIDTHS = {"1m": 60, "1h": 3_600, "1d": 86_400}
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z
# Buckets a page: (default, most), as OpenAI's.
PAGE_BUCKETS = {"1m": (60, 1_440), "1h": (24, 168), "1d": (7, 31)}
COSTS_PAGE_BUCKETS = (7, 180)
# What each report groups by: the outcome log's column, or None for dimensions Pitstop does not have.
# A project is a team here (its requests' key's team, when they came).
GROUPS: dict[Report, dict[str, str | None]] = {
    "completions": {"model": "model", "api_key_id": "api_key_id", "batch": "batch", "route_group": "route_group",
                    "endpoint": "endpoint", "project_id": "team_id", "user_id": None, "service_tier": None,
                    "api_source": None},
    "embeddings": {"model": "model", "api_key_id": "api_key_id", "route_group": "route_group",
                   "project_id": "team_id", "user_id": None},
    "moderations": {"model": "model", "api_key_id": "api_key_id", "project_id": "team_id", "user_id": None},
    "audio_transcriptions": {"model": "model", "api_key_id": "api_key_id", "project_id": "team_id", "user_id": None},
    "audio_speeches": {"model": "model", "api_key_id": "api_key_id", "project_id": "team_id", "user_id": None},
    # An image's size and source (generation, edit, variation) are not in the rollup: grouped by, they are null.
    "images": {"model": "model", "api_key_id": "api_key_id", "project_id": "team_id", "user_id": None, "size": None,
               "source": None},
    "costs": {"line_item": "model", "api_key_id": "api_key_id", "route_group": "route_group",
              "project_id": "team_id", "user_id": None, "api_source": None},
}
_NO_SUCH_FILTER = ("user_ids",)


@dataclass(frozen=True)
class UsageRequest:
    report: Report
    query: UsageQuery  # this page's range
    names: tuple[str, ...]  # the group_by names asked, in the report's terms
    range_end: int  # the whole range's end: pages go on until it
    page_buckets: int


def _list(request: Request, name: str) -> list[str] | None:
    """A list parameter as the SDK sends it (`name[]=a&name[]=b`), repeated, or comma-separated."""
    values = request.query_params.getlist(name) + request.query_params.getlist(name + "[]")
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return items if values else None


def _int(request: Request, name: str, default: int | None = None) -> int:
    value = request.query_params.get(name)
    if value is None:
        if default is None:
            raise bad_request(f"'{name}' is required (Unix seconds)", name, "missing_required_parameter")
        return default
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"'{name}' must be an integer, not {value!r}", name, "invalid_value") from None


def _bool(request: Request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise bad_request(f"'{name}' must be true or false, not {value!r}", name, "invalid_value")
    return value.lower() == "true"


def parse(request: Request, report: Report, now: int) -> UsageRequest:
    params = request.query_params
    width = params.get("bucket_width", "1d")
    allowed_widths = ("1d",) if report == "costs" else tuple(WIDTHS)
    if width not in allowed_widths:
        raise bad_request(f"'bucket_width' must be one of {', '.join(allowed_widths)}, not {width!r}", "bucket_width",
                          "invalid_value")
    default_buckets, most = COSTS_PAGE_BUCKETS if report == "costs" else PAGE_BUCKETS[width]
    limit = _int(request, "limit", default_buckets)
    if not 1 <= limit <= most:
        raise bad_request(f"'limit' must be between 1 and {most} for bucket_width {width}", "limit", "invalid_value")
    start, end = _int(request, "start_time"), _int(request, "end_time", now + 1)
    for name, value in (("start_time", start), ("end_time", end)):
        if not 0 <= value <= LAST_SECOND:
            raise bad_request(f"'{name}' must be Unix seconds between 0 and {LAST_SECOND} (year 9999)", name,
                              "invalid_value")
    if end <= start:
        raise bad_request("'end_time' must be after 'start_time' (Unix seconds; end exclusive)", "end_time",
                          "invalid_value")
    names = tuple(_list(request, "group_by") or ())
    groups = GROUPS[report]
    for name in names:
        if name not in groups:
            raise bad_request(f"'group_by' may name {', '.join(groups)}; not {name!r}", "group_by", "invalid_value")
    for name in _NO_SUCH_FILTER:
        if _list(request, name) is not None:
            raise bad_request(f"'{name}': Pitstop has no users (group by api_key_id, or by project_id: a team)",
                              name, "invalid_value")
    for name in ("sizes", "sources"):
        if report == "images" and _list(request, name) is not None:
            raise bad_request(f"'{name}': the usage Pitstop keeps has no image sizes or sources to filter by",
                              name, "invalid_value")
    page = params.get("page")
    if page is not None:
        try:
            page_start = int(page)
        except ValueError:
            raise bad_request("'page' must be a `next_page` this endpoint gave", "page", "invalid_value") from None
        if not start <= page_start < end:
            raise bad_request("'page' is not within the range asked (send the same start_time and end_time)",
                              "page", "invalid_value")
        start = page_start
    bucket_s = WIDTHS[width]
    aligned = start - start % bucket_s
    models = _list(request, "line_items" if report == "costs" else "models")
    query = UsageQuery(start=start, end=min(end, aligned + limit * bucket_s), bucket_s=bucket_s,
                       group_by=tuple(dict.fromkeys(c for name in names if (c := groups[name]) is not None)),
                       endpoints=ENDPOINTS[report],
                       models=tuple(models) if models is not None else None,
                       api_key_ids=tuple(ids) if (ids := _list(request, "api_key_ids")) is not None else None,
                       team_ids=tuple(teams) if (teams := _list(request, "project_ids")) is not None else None,
                       batch=_bool(request, "batch") if report == "completions" else None)
    return UsageRequest(report, query, names, end, limit)


async def readable_keys(state: GatewayState, request: Request) -> tuple[str, ...] | None:
    """The keys whose usage the caller may read; None for every key's."""
    if state.auth.is_master(request.headers):
        return None
    caller = await state.auth.authenticate(request.headers)  # a 401 where keys are required
    if caller.key_id is not None:
        return (caller.key_id,)
    if state.settings.auth.master_key is not None:
        raise APIError(401, "reading usage needs the master key, or an API key (for its own usage)",
                       code="invalid_api_key")
    return None


def restrict(asked: UsageRequest, keys: tuple[str, ...] | None) -> UsageRequest:
    if keys is None:
        return asked
    wanted = asked.query.api_key_ids
    if wanted is not None and not set(wanted) <= set(keys):
        raise APIError(403, "an API key may read only its own usage", "api_key_ids", "forbidden")
    query = UsageQuery(**{**asked.query.__dict__, "api_key_ids": keys})
    return UsageRequest(asked.report, query, asked.names, asked.range_end, asked.page_buckets)


def _result(report: Report, names: tuple[str, ...], totals: UsageTotals) -> dict[str, Any]:
    groups = GROUPS[report]
    dimensions = {name: totals.group.get(column) if name in names and column else None
                  for name, column in groups.items()}
    if report == "costs":
        return {"object": "organization.costs.result", "amount": {"value": totals.cost_usd, "currency": "usd"},
                **dimensions, "baseline_amount": {"value": totals.baseline_cost_usd, "currency": "usd"},
                "num_model_requests": totals.requests, "cache_hits": totals.cache_hits}
    if report in UNITS:
        return {"object": f"organization.usage.{report}.result", UNITS[report]: round(totals.units),
                "num_model_requests": totals.requests, **dimensions, "cache_hits": totals.cache_hits}
    counted = {"input_tokens": totals.input_tokens, "num_model_requests": totals.requests}
    if report == "completions":
        counted |= {"output_tokens": totals.output_tokens, "input_cached_tokens": totals.cached_tokens,
                    "input_audio_tokens": 0, "output_audio_tokens": 0}
    return {"object": f"organization.usage.{report}.result", **counted, **dimensions, "cache_hits": totals.cache_hits}


def page(asked: UsageRequest, totals: list[UsageTotals]) -> dict[str, Any]:
    query = asked.query
    by_bucket: dict[int, list[UsageTotals]] = {}
    for part in totals:
        by_bucket.setdefault(part.bucket, []).append(part)
    data = []
    for index in range(query.buckets):
        low, high = query.bucket_bounds(index)
        data.append({"object": "bucket", "start_time": low, "end_time": high,
                     "results": [_result(asked.report, asked.names, t) for t in by_bucket.get(index, ())]})
    more = query.end < asked.range_end
    return {"object": "page", "data": data, "has_more": more, "next_page": str(query.end) if more else None}


async def _report(request: Request, report: Report) -> JSONResponse:
    state: GatewayState = request.app.state.pitstop
    keys = await readable_keys(state, request)
    asked = restrict(parse(request, report, int(time.time())), keys)
    assert state.db is not None
    try:
        totals = await asyncio.to_thread(usage, state.db, asked.query)
    except Exception as exc:
        raise APIError(503, f"usage is unavailable (the database is not answering: {describe(exc)}); retry",
                       code="usage_unavailable") from None
    return JSONResponse(page(asked, totals))


async def completions_usage(request: Request) -> JSONResponse:
    return await _report(request, "completions")


async def embeddings_usage(request: Request) -> JSONResponse:
    return await _report(request, "embeddings")


async def moderations_usage(request: Request) -> JSONResponse:
    return await _report(request, "moderations")


async def audio_transcriptions_usage(request: Request) -> JSONResponse:
    return await _report(request, "audio_transcriptions")


async def audio_speeches_usage(request: Request) -> JSONResponse:
    return await _report(request, "audio_speeches")


async def images_usage(request: Request) -> JSONResponse:
    return await _report(request, "images")


async def costs(request: Request) -> JSONResponse:
    return await _report(request, "costs")
