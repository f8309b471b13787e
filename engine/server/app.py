"""The engine's HTTP server: OpenAI-compatible generation and embeddings, vLLM's /tokenize and /detokenize, the
session-pin control API, stats, health and Prometheus metrics, over one AsyncEngine. `create_app` builds a fresh app with its own
metrics registry; the app starts the engine on startup and shuts it down on exit."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.async_engine import AsyncEngine, EngineDeadError, SessionNotFoundError
from engine.harmony import check_tokenizer, is_harmony, parsers_for
from engine.sampling_params import InvalidRequestError
from engine.server.audio import transcriptions, translations
from engine.server.embeddings import embeddings
from engine.server.errors import APIError, engine_unavailable, not_found
from engine.server.generation import ServerState, chat_completions, completions
from engine.server.json_body import read_json
from engine.server.lora_endpoints import load_lora_adapter, unload_lora_adapter
from engine.server.metrics import ServerMetrics
from engine.server.protocol import read_ttl
from engine.server.sleep_endpoints import is_sleeping, sleep, wake_up
from engine.server.tokenize import detokenize_endpoint, tokenize_endpoint
from engine.server.weight_endpoints import (
    is_paused,
    pause,
    reset_prefix_cache,
    resume,
    update_weights_from_disk,
)
from engine.sleep import SleepStateError
from engine.tracing import Tracing

logger = logging.getLogger(__name__)
_SESSIONS_PREFIX = "/v1/engine/sessions/"


def _state(request: Request) -> ServerState:
    return request.app.state.pitstop


# ---- control API ----------------------------------------------------------------------------------


async def pin_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    ttl_s = read_ttl(await read_json(request))
    pinned = await _state(request).engine.pin_session(session_id, ttl_s)
    return JSONResponse({"session_id": session_id, "pinned_blocks": pinned, "ttl_s": ttl_s})


async def extend_session_pin(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    ttl_s = read_ttl(await read_json(request))
    if not await _state(request).engine.extend_session_pin(session_id, ttl_s):
        raise not_found(f"session {session_id!r} holds no pin to extend", "session_id", "pin_not_found")
    return JSONResponse({"session_id": session_id, "extended": True, "ttl_s": ttl_s})


async def unpin_session(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    unpinned = await _state(request).engine.unpin_session(session_id)
    return JSONResponse({"session_id": session_id, "unpinned": unpinned})


async def session_info(request: Request) -> Response:
    session_id = request.path_params["session_id"]
    info = await _state(request).engine.session_info(session_id)
    if info is None:
        raise SessionNotFoundError(session_id)
    return JSONResponse(info)


async def engine_stats(request: Request) -> Response:
    return JSONResponse(dataclasses.asdict(await _state(request).engine.stats()))


# ---- discovery, health, metrics -------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    state = _state(request)
    model = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "pitstop",
             "max_model_len": state.engine.max_model_len}
    if (folder := getattr(state.engine.engine.runner, "model_dir", None)) is not None:
        model["root"] = str(folder)  # as vLLM lists it; after a weight update, the folder served now
    # LoRA adapters as vLLM lists them: their folder as `root`, the base model as `parent`.
    adapters = [{"id": a.name, "object": "model", "created": state.created, "owned_by": "pitstop", "root": a.path,
                 "parent": state.model_name, "max_model_len": state.engine.max_model_len}
                for a in list(state.engine.engine.loras.values())]
    return JSONResponse({"object": "list", "data": [model, *adapters]})


async def healthz(request: Request) -> Response:
    engine = _state(request).engine
    if not engine.is_healthy:
        raise engine_unavailable(engine.dead_reason)
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    state = _state(request)
    stats = None
    if state.engine.is_healthy:
        with suppress(EngineDeadError):  # died just now: reported unhealthy below
            stats = await state.engine.stats()
    body = state.metrics.render(stats, state.engine.is_healthy, state.engine.is_paused, state.engine.sleeping_tags)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


# ---- errors ---------------------------------------------------------------------------------------


def to_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), exc.param)
    if isinstance(exc, SessionNotFoundError):
        return not_found(f"unknown session {exc.args[0]!r}", "session_id", "session_not_found")
    if isinstance(exc, EngineDeadError):
        return engine_unavailable(str(exc))
    if isinstance(exc, SleepStateError):  # engine/sleep.py: a call that does not fit what sleeps now
        return APIError(409, str(exc), code=exc.code)
    if isinstance(exc, ClientDisconnect):  # gone while sending the body: nobody reads the answer
        return APIError(400, "the client disconnected while sending the request")
    if isinstance(exc, HTTPException):
        return APIError(exc.status_code, exc.detail, code="not_found" if exc.status_code == 404 else None)
    logger.exception("unhandled error", exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


def _endpoint(path: str) -> str:
    # A bounded label set: session ids and unknown paths would grow it without end.
    if path.startswith(_SESSIONS_PREFIX):
        return _SESSIONS_PREFIX.rstrip("/")
    return path if path in _KNOWN_PATHS else "other"


async def handle_error(request: Request, exc: Exception) -> Response:
    error = to_api_error(exc)
    _state(request).metrics.observe_error(_endpoint(request.url.path), error.status)
    return error.response()


# ---- the app --------------------------------------------------------------------------------------

ROUTES = [
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),  # last-token pooling (engine/openai_embeddings.py)
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),  # a Whisper model's (engine/server/audio.py)
    Route("/v1/audio/translations", translations, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/tokenize", tokenize_endpoint, methods=["POST"]),  # vLLM's: count a prompt before sending it
    Route("/detokenize", detokenize_endpoint, methods=["POST"]),
    Route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"]),  # vLLM's runtime LoRA API
    Route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"]),
    Route("/pause", pause, methods=["POST"]),  # vLLM's RL control; behind --allow-weight-updates
    Route("/resume", resume, methods=["POST"]),
    Route("/is_paused", is_paused, methods=["GET"]),
    Route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"]),
    Route("/update_weights_from_disk", update_weights_from_disk, methods=["POST"]),  # SGLang's
    Route("/sleep", sleep, methods=["POST"]),  # vLLM's sleep mode; behind --enable-sleep-mode
    Route("/wake_up", wake_up, methods=["POST"]),
    Route("/is_sleeping", is_sleeping, methods=["GET"]),
    Route("/v1/engine/stats", engine_stats, methods=["GET"]),
    Route("/v1/engine/sessions/{session_id}", session_info, methods=["GET"]),
    Route("/v1/engine/sessions/{session_id}/pin", pin_session, methods=["POST"]),
    Route("/v1/engine/sessions/{session_id}/pin", unpin_session, methods=["DELETE"]),
    Route("/v1/engine/sessions/{session_id}/extend", extend_session_pin, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
_KNOWN_PATHS = {route.path for route in ROUTES if "{" not in route.path}


def create_app(engine: AsyncEngine, model_name: str, reasoning_parser: str | None = None,
               tool_call_parser: str | None = None, allow_lora_updates: bool = False,
               otlp_traces_endpoint: str | None = None, allow_weight_updates: bool = False,
               enable_sleep_mode: bool = False) -> Starlette:
    """`otlp_traces_endpoint` (vLLM's --otlp-traces-endpoint): an OTLP/HTTP collector that gets a span per
    generation request (engine/request_span.py), as service OTEL_SERVICE_NAME (default pitstop-engine).
    `enable_sleep_mode` (vLLM's --enable-sleep-mode): POST /sleep, /wake_up, GET /is_sleeping."""
    tracing = None if otlp_traces_endpoint is None else Tracing(
        otlp_traces_endpoint, os.environ.get("OTEL_SERVICE_NAME") or "pitstop-engine")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()
            if tracing is not None:  # the last spans exported (a collector that is down: given up on)
                await asyncio.to_thread(tracing.shutdown)

    handlers = {exc: handle_error for exc in (Exception, HTTPException, APIError, InvalidRequestError,
                                              SessionNotFoundError, EngineDeadError, ClientDisconnect,
                                              SleepStateError)}
    app = Starlette(routes=ROUTES, exception_handlers=handlers, lifespan=lifespan)
    model_type = getattr(getattr(engine.engine.runner, "config", None), "model_type", "")
    reasoning_parser, tool_call_parser = parsers_for(model_type, reasoning_parser, tool_call_parser)  # gpt-oss's
    if is_harmony(reasoning_parser, tool_call_parser):
        check_tokenizer(engine.tokenizer)
    app.state.pitstop = ServerState(engine, model_name, ServerMetrics(), reasoning_parser, tool_call_parser,
                                    allow_lora_updates, tracing, allow_weight_updates, enable_sleep_mode)
    return app
