"""The response cache's one admin call, for the master key: drop what it keeps, all of it or one model's
(a model whose weights were replaced under the same name; a model pointed elsewhere in the config starts
afresh by itself, its deployments being part of its keys).

    DELETE /v1/cache                 -> {"object": "cache.flush", "model": null, "deleted": N}
    DELETE /v1/cache?model=llama-8b  -> one model's answers

With `cache.semantic` the semantic index's entries go too, counted apart (`"semantic_deleted": M`).

With `backend: redis` it empties every replica's cache; a local cache is this replica's alone."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.server.errors import APIError, not_found
from gateway.cache_stores import CacheUnavailable
from gateway.key_admin import require_master
from gateway.state import GatewayState


async def flush_cache(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.pitstop
    require_master(state, request, "managing the response cache")
    if state.cache is None:
        raise not_found("the response cache is off (no `cache:` in the config)", "cache")
    model = request.query_params.get("model")
    if model is not None and model not in state.settings.model_names:
        raise not_found(f"no model named {model!r} (a route group's answers are kept under its models' names)",
                        "model")
    try:
        deleted = await state.cache.flush(model)
    except CacheUnavailable as exc:
        raise APIError(503, f"the response cache's Redis is not answering: {exc}", code="cache_unavailable") from None
    return JSONResponse({"object": "cache.flush", "model": model, **deleted})
