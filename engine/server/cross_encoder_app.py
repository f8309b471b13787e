"""`pitstop engine serve --model FOLDER` where the folder is a cross-encoder (engine/cross_encoder.py) or a
decoder classifier (engine/decoder_scorer.py): vLLM's rerank paths (/v1/rerank, /rerank, /v2/rerank) and score
paths (/v1/score, /score) with its bodies and answers (engine/cross_encoder_api.py), a classifier's /classify
(engine/classify_api.py), /v1/models, /healthz (and vLLM's /health). It generates and embeds nothing: chat,
completions and embeddings are a 400 naming the paths it serves. Errors in OpenAI's shape."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.cross_encoder_api import PairScorer, rerank_answer, score_answer
from engine.sampling_params import InvalidRequestError
from engine.server.app import to_api_error
from engine.server.errors import APIError, bad_request
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse

RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
SCORE_PATHS = ("/v1/score", "/score")
CLASSIFY_PATHS = ("/classify", "/v1/classify")
_NOT_SERVED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def answering(answer: Callable[..., Awaitable[dict]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        app = request.app.state
        return SafeJSONResponse(await answer(app.encoder, await read_json(request), app.model_name, app.model_name))
    return endpoint


async def _not_served(request: Request) -> Response:
    served = [route.path for route in request.app.routes if "POST" in (getattr(route, "methods", None) or ())
              and route.endpoint is not _not_served]
    raise bad_request(f"the model {request.app.state.model_name!r} is a reranker or classifier: this server serves "
                      f"{', '.join(served)}, not {request.url.path}", "model", "model_not_supported")


async def _models(request: Request) -> Response:
    state = request.app.state
    return JSONResponse({"object": "list", "data": [
        {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "pitstop",
         "root": str(state.encoder.model_dir), "max_model_len": state.encoder.max_model_len}]})


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _error(request: Request, exc: Exception) -> Response:
    return to_api_error(exc).response()


def create_cross_encoder_app(encoder: PairScorer, model_name: str, extra_routes: Sequence[Route] = ()) -> Starlette:
    """`extra_routes`: a classifier's /classify."""
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await encoder.start()
        try:
            yield
        finally:
            await encoder.shutdown()

    routes = [*(Route(path, answering(rerank_answer), methods=["POST"]) for path in RERANK_PATHS),
              *(Route(path, answering(score_answer), methods=["POST"]) for path in SCORE_PATHS),
              *extra_routes, *(Route(path, _not_served, methods=["POST"]) for path in _NOT_SERVED),
              Route("/v1/models", _models, methods=["GET"]),
              Route("/healthz", _health, methods=["GET"]), Route("/health", _health, methods=["GET"])]
    handlers = {exc: _error for exc in (Exception, HTTPException, APIError, InvalidRequestError, ClientDisconnect)}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.encoder, app.state.model_name, app.state.created = encoder, model_name, int(time.time())
    return app
