"""New weights for every engine instance of a model in one call, for the master key: what an RL trainer
sends between rollout rounds when its rollout engines sit behind the gateway (SGLang's router forwards
the same call to its workers).

    POST /update_weights_from_disk {"model", "model_path", "abort_all_requests"?, "draft_model_path"?}

Each deployment of `model` is one of Pitstop's engines: in the gateway's process (`pitstop-local/`), whose
engine is updated directly, or a `pitstop engine serve --allow-weight-updates` (`pitstop-engine/`), sent
the engine's own call (engine/server/weight_endpoints.py) through gateway/engine_broadcast.py; `model_path`
is a folder on the engines' machines, as is `draft_model_path`, the draft model's new weights (each engine
must speculate with a draft model of its shape). A model with any other deployment (vLLM, a provider) is a
400 before any engine is touched. The engines are updated at once, each paused for it as the engine's own call does
(its requests finish on the old weights, or are aborted); one that fails keeps its old weights, and the
answer, a 502, says which (call again, or with the old folder to roll the others back). The response
cache's answers of the model are dropped after an update (gateway/cache_admin.py): they came from the old
weights."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.async_engine import AsyncEngine
from engine.server.errors import bad_request
from engine.server.json_body import read_json
from engine.server.weight_endpoints import draft_path
from gateway.cache_stores import CacheUnavailable
from gateway.engine_broadcast import AdminCall, answer, broadcast, engines_of
from gateway.key_admin import require_master
from gateway.state import GatewayState


def _update_call(model_path: str, abort_all: bool, draft_model_path: str | None) -> AdminCall:
    async def local(engine: AsyncEngine) -> dict[str, Any]:
        return (await engine.update_weights(model_path, abort_all, draft_model_path)).as_json()

    body: dict[str, Any] = {"model_path": model_path, "abort_all_requests": abort_all}
    if draft_model_path is not None:  # left out otherwise, as an engine without the field expects
        body["draft_model_path"] = draft_model_path
    return AdminCall(local, "POST", "/update_weights_from_disk", json=body)


async def update_weights_from_disk(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.pitstop
    require_master(state, request, "updating engines' weights")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model, model_path, abort_all = body.get("model"), body.get("model_path"), body.get("abort_all_requests", False)
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must name a model of the gateway", "model")
    if not isinstance(model_path, str) or not model_path:
        raise bad_request("'model_path' must be a non-empty string: a checkpoint folder on the engines' machines",
                          "model_path")
    if not isinstance(abort_all, bool):
        raise bad_request("'abort_all_requests' must be a boolean", "abort_all_requests")
    draft_model_path = draft_path(body)
    reached = await broadcast(engines_of(state, model, "update the weights of"),
                              _update_call(model_path, abort_all, draft_model_path))
    cache_deleted = await _flush_cache(state, model) if any(r.ok for r in reached) else None
    return answer(model, reached, "kept their weights", "weight_update_failed", model_path=model_path,
                  **({"draft_model_path": draft_model_path} if draft_model_path else {}), cache_deleted=cache_deleted)


async def _flush_cache(state: GatewayState, model: str) -> dict | None:
    if state.cache is None:
        return None
    try:
        return await state.cache.flush(model)
    except CacheUnavailable:  # the update stands; the caller can flush with DELETE /v1/cache?model=...
        return {"error": "the response cache's Redis is not answering"}
