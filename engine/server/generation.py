"""POST /v1/completions and /v1/chat/completions: validate, tokenize, generate, answer in OpenAI's
shapes, whole or as server-sent events. A client that goes away aborts its request: a streaming
response closes its generator (SSEResponse), a whole one races the generation against the
connection's disconnect message."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.beam_generation import BeamGeneration, generation_for
from engine.openai_generation import OpenAIGeneration
from engine.request_span import RequestSpan
from engine.sampling_params import InvalidRequestError
from engine.server.disconnect import unless_disconnected
from engine.server.errors import engine_unavailable, error_body, not_found
from engine.server.json_body import MAX_BODY_BYTES, read_json
from engine.server.metrics import ServerMetrics
from engine.server.protocol import parse_chat, parse_completion
from engine.server.sse import DONE, SSEResponse, sse_event
from engine.tracing import Tracing


@dataclass
class ServerState:
    engine: AsyncEngine
    model_name: str
    metrics: ServerMetrics
    reasoning_parser: str | None = None  # engine/reasoning.py
    tool_call_parser: str | None = None  # engine/tool_parsers.py
    allow_lora_updates: bool = False  # engine/server/lora_endpoints.py
    tracing: Tracing | None = None  # --otlp-traces-endpoint: one span per generation (engine/request_span.py)
    allow_weight_updates: bool = False  # engine/server/weight_endpoints.py
    enable_sleep_mode: bool = False  # engine/server/sleep_endpoints.py
    created: int = field(default_factory=lambda: int(time.time()))

    def adapter_for(self, model: str) -> str | None:
        """The LoRA adapter a request's `model` names, None for the base model; a 404 for anything else."""
        if model == self.model_name:
            return None
        if model in self.engine.engine.loras:
            return model
        served = ", ".join(repr(name) for name in [self.model_name, *self.engine.lora_names])
        raise not_found(f"the model {model!r} does not exist; this server serves {served}", "model", "model_not_found")


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def _generate(request: Request, chat: bool) -> Response:
    state: ServerState = request.app.state.pitstop
    engine = state.engine
    # A completion may carry prompt embeddings: a larger body, where they are on (engine/prompt_embeds.py).
    limit = MAX_BODY_BYTES
    if not chat:  # imported here: torch, which the gateway's start does not load (engine/prompt_embeds.py)
        from engine.prompt_embeds import body_limit

        limit = body_limit(engine)
    body = await read_json(request, limit)
    parsed = (parse_chat if chat else parse_completion)(body)
    adapter = state.adapter_for(parsed.model)
    if not engine.is_healthy:
        raise engine_unavailable(engine.dead_reason)
    generation = generation_for(engine, parsed, chat, parsed.model, reasoning_parser=state.reasoning_parser,
                                tool_call_parser=state.tool_call_parser, lora=adapter)  # or a beam search
    if state.tracing is not None:  # under the caller's trace (its traceparent), else a trace of its own
        generation.on_end = RequestSpan(state.tracing, state.tracing.continued(request.headers))
    await generation.start()
    endpoint = request.url.path
    if parsed.stream:
        return SSEResponse(_events(generation, state.metrics, endpoint))
    return await _whole(request, generation, state.metrics, endpoint)


async def _whole(request: Request, generation: OpenAIGeneration | BeamGeneration, metrics: ServerMetrics,
                 endpoint: str) -> Response:
    work = await unless_disconnected(request, generation.whole())
    if work.cancelled():
        metrics.requests.labels(endpoint, "abort").inc()
        return Response(status_code=499)
    try:
        body = work.result()
    except EngineDeadError as exc:
        raise engine_unavailable(str(exc)) from None
    assert generation.last is not None
    metrics.observe_finished(endpoint, generation.last, generation.ttft_s,
                             time.monotonic() - generation.started)
    return JSONResponse(body)


async def _events(generation: OpenAIGeneration | BeamGeneration, metrics: ServerMetrics,
                  endpoint: str) -> AsyncGenerator[bytes, None]:
    failed = False
    chunks = generation.chunks()
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield sse_event(chunk)
        if generation.last is not None:
            metrics.observe_finished(endpoint, generation.last, generation.ttft_s,
                                     time.monotonic() - generation.started)
    except EngineDeadError as exc:  # the status line is long gone: the error travels as an event
        failed = True
        metrics.observe_error(endpoint, 503)
        yield sse_event(error_body(503, f"the engine is not available: {exc}", code="engine_unavailable"))
    except InvalidRequestError as exc:
        failed = True
        metrics.observe_error(endpoint, 400)
        yield sse_event(error_body(400, str(exc), exc.param))
    finally:
        last = generation.last
        if not failed and (last is None or not last.finished):  # the client went away
            metrics.requests.labels(endpoint, "abort").inc()
    if not failed:  # a broken stream ends with its error event, never with a clean [DONE]
        yield DONE
