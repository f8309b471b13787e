"""The gateway app factory: `create_app(settings)` builds a Starlette app with its own state;
deployments start with the app and stop (flushing the outcome log) with it."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import APIError
from gateway import (
    audit_endpoints,
    batch_endpoints,
    cache_admin,
    config_endpoint,
    conversation_endpoints,
    endpoints,
    files,
    gemini_endpoints,
    key_admin,
    key_rotation,
    mcp_gateway,
    media,
    moderation,
    proxy,
    realtime,
    rerank,
    rl_admin,
    session_endpoint,
    stored_completion_endpoints,
    team_admin,
    usage_endpoints,
    vector_store_endpoints,
    videos,
    vllm_endpoints,
    vllm_tokenize,
    webhook_endpoints,
    weight_admin,
)
from gateway.config import Settings
from gateway.state import GatewayState, build_state

log = logging.getLogger("pitstop.gateway")

ROUTES = [
    Route("/v1/chat/completions", proxy.chat_completions, methods=["POST"]),
    Route("/v1/completions", proxy.completions, methods=["POST"]),
    Route("/v1/embeddings", proxy.embeddings, methods=["POST"]),
    *rerank.ROUTES,  # /v1/rerank, /rerank, /v2/rerank
    *vllm_endpoints.ROUTES,  # vLLM's /classify, /score (and under /v1)
    *vllm_tokenize.ROUTES,  # vLLM's /tokenize, /detokenize
    *moderation.ROUTES,  # /v1/moderations, /moderations
    *media.ROUTES,  # /v1/audio/transcriptions, /translations, /speech, /v1/images/generations
    *videos.ROUTES,  # /v1/videos: OpenAI's Videos API (Sora), jobs kept by the deployment that holds them
    *realtime.ROUTES,  # WebSocket /v1/realtime, /realtime: OpenAI's Realtime API, relayed
    *mcp_gateway.ROUTES,  # /mcp, /mcp/{server}: the gateway as an MCP server over `mcp_servers:`
    Route("/v1/responses", proxy.responses, methods=["POST"]),
    Route("/v1/responses/input_tokens", endpoints.count_response_tokens, methods=["POST"]),
    Route("/v1/responses/compact", proxy.compact_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", endpoints.retrieve_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", endpoints.delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", endpoints.response_input_items, methods=["GET"]),
    Route("/v1/responses/{response_id}/cancel", endpoints.cancel_response, methods=["POST"]),
    *conversation_endpoints.ROUTES,
    *files.ROUTES,
    *batch_endpoints.ROUTES,
    *webhook_endpoints.ROUTES,
    *stored_completion_endpoints.ROUTES,
    *vector_store_endpoints.ROUTES,
    Route("/v1/messages", proxy.messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", endpoints.count_message_tokens, methods=["POST"]),
    *gemini_endpoints.ROUTES,  # Google's Gemini API: /v1beta/models/{model}:generateContent etc. (and /v1, /v1alpha)
    Route("/v1/models", gemini_endpoints.openai_or_gemini(endpoints.list_models, gemini_endpoints.list_models),
          methods=["GET"]),  # OpenAI's list, or Gemini's for Google's clients
    Route("/update_weights_from_disk", weight_admin.update_weights_from_disk, methods=["POST"]),  # RL, master key
    *rl_admin.ROUTES,  # /pause, /resume, /is_paused, /sleep, /wake_up, /is_sleeping, /reset_prefix_cache
    Route("/v1/models/{model:path}", gemini_endpoints.openai_or_gemini(endpoints.retrieve_model,
                                                                      gemini_endpoints.get_model), methods=["GET"]),
    Route("/v1/feedback", endpoints.feedback, methods=["POST"]),
    Route("/v1/sessions/{session_id}", session_endpoint.get_session, methods=["GET"]),
    Route("/v1/keys", key_admin.create_key, methods=["POST"]),
    Route("/v1/keys", key_admin.list_keys, methods=["GET"]),
    Route("/v1/keys/{key_id}", key_admin.get_key, methods=["GET"]),
    Route("/v1/keys/{key_id}", key_admin.update_key, methods=["PATCH"]),
    Route("/v1/keys/{key_id}", key_admin.revoke_key, methods=["DELETE"]),
    Route("/v1/keys/{key_id}/rotate", key_rotation.rotate_key, methods=["POST"]),  # a new secret, old one's grace
    *audit_endpoints.ROUTES,  # /v1/organization/audit_logs: admin changes, master key
    *team_admin.ROUTES,  # /v1/teams: keys that share a budget and limits, master key
    Route("/v1/cache", cache_admin.flush_cache, methods=["DELETE"]),
    Route("/config/reload", config_endpoint.reload_config, methods=["POST"]),  # the model list, master key
    Route("/v1/organization/usage/completions", usage_endpoints.completions_usage, methods=["GET"]),
    Route("/v1/organization/usage/embeddings", usage_endpoints.embeddings_usage, methods=["GET"]),
    Route("/v1/organization/usage/moderations", usage_endpoints.moderations_usage, methods=["GET"]),
    Route("/v1/organization/usage/audio_transcriptions", usage_endpoints.audio_transcriptions_usage, methods=["GET"]),
    Route("/v1/organization/usage/audio_speeches", usage_endpoints.audio_speeches_usage, methods=["GET"]),
    Route("/v1/organization/usage/images", usage_endpoints.images_usage, methods=["GET"]),
    Route("/v1/organization/costs", usage_endpoints.costs, methods=["GET"]),
    Route("/healthz", endpoints.healthz, methods=["GET"]),
    Route("/readyz", endpoints.readyz, methods=["GET"]),
    Route("/metrics", endpoints.metrics, methods=["GET"]),
]


async def _handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, APIError):
        error = exc
    elif isinstance(exc, HTTPException):
        error = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    else:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        error = APIError(500, "internal server error", code="internal_error")
    state: GatewayState | None = getattr(request.app.state, "pitstop", None)
    if state is not None:
        state.metrics.errors.labels(str(error.status), error.code or "").inc()
    return error.response()


def create_app(settings: Settings, state: GatewayState | None = None) -> Starlette:
    state = state or build_state(settings)
    state.batches.serve = functools.partial(proxy.serve_body, state)  # a batch's lines, served as requests
    state.batches.caller_of = state.auth.caller_of
    state.vector_stores.connect(functools.partial(proxy.serve_body, state), state.auth.caller_of)  # a model embedder
    if state.cache is not None and state.cache.semantic is not None:  # a semantic cache's model encoder
        state.cache.semantic.connect(functools.partial(proxy.serve_body, state))
    state.responses.background.resume = functools.partial(proxy.resume_background, state)  # taken over
    state.responses.background.caller_of = state.auth.caller_of
    state.responses.background.counted = lambda outcome: state.metrics.background_takeovers.labels(outcome).inc()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        config_endpoint.reload_on_sighup(state)
        config_endpoint.watch_config(state)
        try:
            yield
        finally:
            await mcp_gateway.close(app)
            await state.close()

    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={Exception: _handle_error, HTTPException: _handle_error,
                                        APIError: _handle_error})
    app.state.pitstop = state
    return app
