"""One admin call sent at once to every Pitstop engine of a model, for the master key (gateway/weight_admin.py,
gateway/rl_admin.py), as SGLang's router forwards its workers' admin calls: an engine in the gateway's
process (`pitstop-local/`) is called directly, a `pitstop engine serve` (`pitstop-engine/`) is sent the
engine's own HTTP call. A model with any other deployment (vLLM, a provider) is a 400 before any engine is
touched, and so is a LoRA adapter's model (its engine is its base model's). The answer lists each engine
with the deployments it serves and what it answered; one that failed makes it a 502 that names it (an
engine that cannot be reached: `engine_unreachable`), the others' answers standing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from starlette.responses import JSONResponse

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError, bad_request, error_body, not_found
from engine.sleep import SleepStateError
from engine.weight_updates import EngineBusyError
from gateway.backends.local import LocalEngineBackend
from gateway.backends.openai_http import OpenAIHTTPBackend
from gateway.deployments import Deployment
from gateway.state import GatewayState

ADMIN_TIMEOUT_S = 600.0  # reading a large checkpoint, or waiting for the requests in flight to finish
ENGINE_PREFIXES = ("pitstop-local/", "pitstop-engine/")
Engine = LocalEngineBackend | OpenAIHTTPBackend


@dataclass(frozen=True)
class EngineOf:
    deployments: list[str]  # those sharing the engine (a LoRA adapter's deployment rides on its base's)
    backend: Engine

    @property
    def key(self) -> tuple[str, object]:
        return engine_key(self.backend)


def engine_key(backend: Engine) -> tuple[str, object]:
    """Which engine a deployment runs on: deployments with the same key share it."""
    return ("local", id(backend.engine)) if isinstance(backend, LocalEngineBackend) else ("http", backend.api_base)


@dataclass(frozen=True)
class AdminCall:
    """The same call both ways: `local` on an AsyncEngine, returning what the HTTP endpoint answers."""

    local: Callable[[AsyncEngine], Awaitable[dict[str, Any]]]
    method: str
    path: str  # the engine server's, e.g. "/pause"
    params: dict[str, str | list[str]] = field(default_factory=dict)
    json: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reached:
    deployments: list[str]
    ok: bool
    detail: dict[str, Any]  # the engine's answer, or its error's fields and status

    @property
    def refused(self) -> bool:
        """The engine answered no (a 4xx): unlike one not reached, it stays as it was."""
        return not self.ok and self.detail.get("status", 500) < 500


def engines_of(state: GatewayState, model: str, doing: str) -> list[EngineOf]:
    """The model's engines, each once with the deployments it serves; a 400 naming any deployment that is
    not one of Pitstop's engines. `doing`: what the call does, for the LoRA refusal ("update the weights of")."""
    deployments: list[Deployment] = state.pool.by_model.get(model, [])
    if not deployments:
        raise not_found(f"no model named {model!r}", "model")
    others = [d.name for d in deployments if not d.provider_model.startswith(ENGINE_PREFIXES)]
    if others:
        raise bad_request(f"{model!r} has deployments that are not Pitstop engines ({', '.join(others)}): only "
                          "pitstop-local/ and pitstop-engine/ deployments take the engines' admin calls", "model")
    engines: dict[tuple[str, object], EngineOf] = {}
    for d in deployments:
        backend = d.backend
        if isinstance(backend, LocalEngineBackend) and backend.lora is not None:
            raise bad_request(f"{model!r} is a LoRA adapter ({d.name}): {doing} its base model", "model")
        assert isinstance(backend, LocalEngineBackend | OpenAIHTTPBackend)
        engine = EngineOf([], backend)
        engines.setdefault(engine.key, engine).deployments.append(d.name)
    return list(engines.values())


def models_on(state: GatewayState, engines: list[EngineOf]) -> list[str]:
    """Every model served by these engines: the model itself and the LoRA adapters riding on them."""
    keys = {engine.key for engine in engines}
    return [model for model, deployments in state.pool.by_model.items()
            if any(isinstance(d.backend, LocalEngineBackend | OpenAIHTTPBackend) and engine_key(d.backend) in keys
                   for d in deployments)]


async def broadcast(engines: list[EngineOf], call: AdminCall) -> list[Reached]:
    return list(await asyncio.gather(*(_one(engine, call) for engine in engines)))


async def _one(engine: EngineOf, call: AdminCall) -> Reached:
    started = time.perf_counter()
    try:
        if isinstance(engine.backend, LocalEngineBackend):
            detail = await _local(engine.backend.engine, call)
        else:
            detail = await _http(engine.backend, call)
    except APIError as exc:
        return Reached(engine.deployments, False, {"status": exc.status, **exc.body()["error"]})
    return Reached(engine.deployments, True, {**detail, "seconds": round(time.perf_counter() - started, 4)})


async def _local(engine: AsyncEngine, call: AdminCall) -> dict[str, Any]:
    """The engine's answer, its refusals as the engine server would answer them."""
    try:
        return await call.local(engine)
    except InvalidRequestError as exc:
        raise APIError(400, str(exc), exc.param) from None
    except EngineBusyError as exc:
        raise APIError(409, str(exc), code="engine_busy") from None
    except SleepStateError as exc:
        raise APIError(409, str(exc), code=exc.code) from None
    except EngineDeadError as exc:
        raise APIError(503, f"the engine is not available: {exc}", code="engine_unavailable") from None


async def _http(backend: OpenAIHTTPBackend, call: AdminCall) -> dict[str, Any]:
    url = backend.api_base.removesuffix("/v1") + call.path
    params = [(name, value) for name, values in call.params.items()
              for value in (values if isinstance(values, list) else [values])]
    try:
        async with backend.session.request(call.method, url, params=params, json=call.json,
                                           timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                error = body.get("error", {}) if isinstance(body, dict) else {}
                raise APIError(response.status, str(error.get("message") or body), error.get("param"),
                               error.get("code"))
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise APIError(502, f"{url}: {type(exc).__name__}: {exc}", code="engine_unreachable") from None
    if not isinstance(body, dict):
        raise APIError(502, f"{url}: the engine answered {body!r}, not a JSON object", code="engine_unreachable")
    return body


def answer(model: str, reached: list[Reached], failed: str, code: str, **fields: Any) -> JSONResponse:
    """200 with every engine's answer; a 502 naming the deployments whose engine failed (`failed`: what they
    did not do, "did not pause"), the others' answers listed too."""
    body = {"model": model, **fields, "engines": [{"deployments": r.deployments, "success": r.ok, **r.detail}
                                                  for r in reached]}
    if all(r.ok for r in reached):
        return JSONResponse({"success": True, **body})
    names = [name for r in reached if not r.ok for name in r.deployments]
    message = (f"{len(names)} of {sum(len(r.deployments) for r in reached)} deployments of {model!r} {failed} "
               f"({', '.join(names)}); see `engines`")
    return JSONResponse({"success": False, **error_body(502, message, None, code), **body}, status_code=502)
