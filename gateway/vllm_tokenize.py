"""vLLM's POST /tokenize and /detokenize through the gateway, for a chat or completion model whose deployment
is Pitstop's engine in this process (`pitstop-local/`: the engine server's own handlers, engine/server/tokenize.py)
or a vLLM server or Pitstop engine over HTTP (`hosted_vllm/`, `pitstop-engine/` on the direct transport: the body
forwarded to its /tokenize beside /v1, the answer passed back as it came). The caller's key and its model access
apply, and the request takes a rate slot as any does; they compute nothing, so they leave no outcome row and cost
nothing. A model with no such deployment is a 400 naming why; an unreachable server is passed over for the
model's next one."""

from __future__ import annotations

from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.server.errors import APIError, bad_request, not_found
from engine.server.json_body import read_json
from gateway.backends.base import BackendError
from gateway.backends.local import LocalEngineBackend
from gateway.backends.openai_http import OpenAIHTTPBackend
from gateway.deployments import Deployment
from gateway.limit_gate import LimitExceeded
from gateway.serving import as_api_error
from gateway.state import GatewayState

_FORWARDED_TO = ("hosted_vllm/", "pitstop-engine/")  # servers that answer vLLM's /tokenize
_TIMEOUT_S = 30.0


def _tokenizers(state: GatewayState, model: str) -> list[Deployment]:
    """The model's deployments that can tokenize, healthy first; a 404 or 400 saying why there are none."""
    routes = state.routes
    if model not in routes.models and not routes.adopt(model):
        raise not_found(f"the model {model!r} does not exist", "model", "model_not_found")
    deployments = state.pool.by_model.get(model, [])
    if any(d.info.mode not in (None, "chat", "completion") for d in deployments):
        raise bad_request(f"the model {model!r} is marked model_info.mode: {deployments[0].info.mode}: /tokenize and "
                          "/detokenize serve chat and completion models", "model", "model_not_supported")
    able = [d for d in deployments if isinstance(d.backend, LocalEngineBackend) or (
        isinstance(d.backend, OpenAIHTTPBackend) and d.provider_model.startswith(_FORWARDED_TO))]
    if not able:
        raise bad_request(f"the model {model!r} has no deployment that tokenizes: /tokenize and /detokenize are "
                          "served by Pitstop's engine in this process (pitstop-local/) or a vLLM server or Pitstop "
                          "engine over the direct transport (hosted_vllm/, pitstop-engine/)", "model",
                          "model_not_supported")
    return sorted(able, key=lambda d: d.unhealthy)


async def _local(backend: LocalEngineBackend, path: str, body: dict) -> dict:
    # torch: imported only where an engine runs in this process
    from engine.server.tokenize import detokenized, tokenized

    if path == "/tokenize":
        return await tokenized(backend.engine, body, backend.served_model)
    return {"prompt": detokenized(backend.engine, body.get("tokens"))}


async def _forwarded(backend: OpenAIHTTPBackend, path: str, body: dict) -> tuple[int, Any]:
    url = backend.api_base.removesuffix("/v1") + path
    async with backend.session.post(url, json={**body, "model": backend.served_model},
                                    timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S)) as response:
        return response.status, await response.json(content_type=None)


async def _answer(request: Request, path: str) -> Response:
    state: GatewayState = request.app.state.pitstop
    caller = await state.auth.authenticate(request.headers)
    body = await read_json(request, state.settings.server.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model", "invalid_type")
    caller.check_model(model)
    deployments = _tokenizers(state, model)
    await state.admit(caller)  # a rate slot; no budget hold: it costs nothing
    last: Exception | None = None
    for deployment in deployments:
        backend = deployment.backend
        if isinstance(backend, LocalEngineBackend):
            return JSONResponse(await _local(backend, path, body))
        assert isinstance(backend, OpenAIHTTPBackend)
        try:
            status, answer = await _forwarded(backend, path, body)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            last = exc  # unreachable, or no JSON: the model's next server
            continue
        return JSONResponse(answer, status_code=status)
    raise BackendError(502, f"no deployment of {model!r} could tokenize: {last!r}", retryable=False,
                       code="upstream_unavailable")


def _endpoint(path: str) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            return await _answer(request, path)
        except (APIError, BackendError) as exc:
            error = as_api_error(exc)
            response = error.response()
            if isinstance(exc, LimitExceeded) and exc.retry_after_s is not None:
                response.headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
            return response
    return endpoint


ROUTES = [Route(path, _endpoint(path), methods=["POST"]) for path in ("/tokenize", "/detokenize")]
