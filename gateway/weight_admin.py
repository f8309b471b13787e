"""New weights for every engine instance of a model in one call, for the master key: what an RL trainer
sends between rollout rounds when its rollout engines sit behind the gateway (SGLang's router forwards
the same call to its workers).

    POST /update_weights_from_disk {"model", "model_path", "abort_all_requests"?}

Each deployment of `model` is one of Pitstop's engines: in the gateway's process (`pitstop-local/`), whose
engine is updated directly, or a `pitstop engine serve --allow-weight-updates` (`pitstop-engine/`), sent
the engine's own call (engine/server/weight_endpoints.py); `model_path` is a folder on the engines'
machines. A model with any other deployment (vLLM, a provider) is a 400 before any engine is touched. The
engines are updated at once, each paused for it as the engine's own call does (its requests finish on the
old weights, or are aborted); one that fails keeps its old weights, and the answer, a 502, says which
(call again, or with the old folder to roll the others back). The response cache's answers of the model are
dropped after an update (gateway/cache_admin.py): they came from the old weights."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse

from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError, bad_request, error_body, not_found
from engine.server.json_body import read_json
from engine.weight_updates import EngineBusyError
from gateway.backends.local import LocalEngineBackend
from gateway.backends.openai_http import OpenAIHTTPBackend
from gateway.cache_stores import CacheUnavailable
from gateway.deployments import Deployment
from gateway.key_admin import require_master
from gateway.state import GatewayState

UPDATE_TIMEOUT_S = 600.0  # reading a large checkpoint, after the requests in flight have finished


@dataclass(frozen=True)
class Updated:
    deployments: list[str]  # those sharing the engine (a LoRA adapter's deployment rides on its base's)
    ok: bool
    detail: dict[str, Any]


def _engines(state: GatewayState, model: str) -> list[tuple[list[str], LocalEngineBackend | OpenAIHTTPBackend]]:
    """The model's engines, each once with the deployments it serves; a 400 naming any deployment that is
    not one of Pitstop's engines."""
    deployments: list[Deployment] = state.pool.by_model.get(model, [])
    if not deployments:
        raise not_found(f"no model named {model!r}", "model")
    others = [d.name for d in deployments if not d.provider_model.startswith(("pitstop-local/", "pitstop-engine/"))]
    if others:
        raise bad_request(f"{model!r} has deployments that are not Pitstop engines ({', '.join(others)}): only "
                          "pitstop-local/ and pitstop-engine/ deployments take new weights from a folder", "model")
    engines: dict[tuple[str, object], tuple[list[str], LocalEngineBackend | OpenAIHTTPBackend]] = {}
    for d in deployments:
        backend = d.backend
        if isinstance(backend, LocalEngineBackend) and backend.lora is not None:
            raise bad_request(f"{model!r} is a LoRA adapter ({d.name}): update its base model's weights", "model")
        assert isinstance(backend, LocalEngineBackend | OpenAIHTTPBackend)
        key = ("local", id(backend.engine)) if isinstance(backend, LocalEngineBackend) else ("http", backend.api_base)
        engines.setdefault(key, ([], backend))[0].append(d.name)
    return list(engines.values())


async def _update(backend: LocalEngineBackend | OpenAIHTTPBackend, model_path: str, abort_all: bool) -> dict:
    """One engine's update: its answer, or an APIError saying why it kept its weights."""
    started = time.perf_counter()
    if isinstance(backend, LocalEngineBackend):
        try:
            update = await backend.engine.update_weights(model_path, abort_all)
        except InvalidRequestError as exc:
            raise APIError(400, str(exc), exc.param) from None
        except EngineBusyError as exc:
            raise APIError(409, str(exc), code="engine_busy") from None
        return {"model_path": update.model_path, "load_s": round(update.load_s, 4),
                "forgotten_blocks": update.forgotten_blocks}
    url = backend.api_base.removesuffix("/v1") + "/update_weights_from_disk"
    try:
        async with backend.session.post(url, json={"model_path": model_path, "abort_all_requests": abort_all},
                                        timeout=aiohttp.ClientTimeout(total=UPDATE_TIMEOUT_S)) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                error = body.get("error", {}) if isinstance(body, dict) else {}
                raise APIError(response.status, str(error.get("message") or body), error.get("param"),
                               error.get("code"))
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise APIError(502, f"{url}: {type(exc).__name__}: {exc}", code="engine_unreachable") from None
    return {**body, "seconds": round(time.perf_counter() - started, 4)}


async def _one(names: list[str], backend: LocalEngineBackend | OpenAIHTTPBackend, model_path: str,
               abort_all: bool) -> Updated:
    try:
        return Updated(names, True, await _update(backend, model_path, abort_all))
    except APIError as exc:
        return Updated(names, False, {"status": exc.status, **exc.body()["error"]})


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
    updated = await asyncio.gather(*(_one(names, backend, model_path, abort_all)
                                     for names, backend in _engines(state, model)))
    results = [{"deployments": u.deployments, "success": u.ok, **u.detail} for u in updated]
    cache_deleted = await _flush_cache(state, model) if any(u.ok for u in updated) else None
    answer = {"model": model, "model_path": model_path, "engines": results, "cache_deleted": cache_deleted}
    if all(u.ok for u in updated):
        return JSONResponse({"success": True, **answer})
    failed = [name for u in updated if not u.ok for name in u.deployments]
    message = (f"{len(failed)} of {sum(len(u.deployments) for u in updated)} deployments of {model!r} kept their "
               f"weights ({', '.join(failed)}); see `engines`")
    return JSONResponse({"success": False, **error_body(502, message, None, "weight_update_failed"), **answer},
                        status_code=502)


async def _flush_cache(state: GatewayState, model: str) -> dict | None:
    if state.cache is None:
        return None
    try:
        return await state.cache.flush(model)
    except CacheUnavailable:  # the update stands; the caller can flush with DELETE /v1/cache?model=...
        return {"error": "the response cache's Redis is not answering"}
