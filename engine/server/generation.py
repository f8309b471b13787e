"""POST /v1/completions and /v1/chat/completions: validate, tokenize, generate, answer in OpenAI's
shapes, whole or as server-sent events. A client that goes away aborts its request: a streaming
response closes its generator (SSEResponse), a whole one races the generation against the
connection's disconnect message."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, suppress
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.outputs import RequestOutput
from engine.sampling_params import InvalidRequestError
from engine.server.errors import bad_request, engine_unavailable, error_body, not_found
from engine.server.metrics import ServerMetrics
from engine.server.protocol import GenerateRequest, parse_chat, parse_completion, read_json
from engine.server.sse import DONE, SSEResponse, sse_event

# Prompts longer than this are tokenized on a worker thread, so one huge prompt does not stall
# every stream on the event loop.
_INLINE_TOKENIZE_CHARS = 32 << 10


@dataclass
class ServerState:
    engine: AsyncEngine
    model_name: str
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))


def usage(out: RequestOutput) -> dict:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}


class _Shapes:
    """The JSON objects of one response: OpenAI's chat or legacy text-completion format."""

    def __init__(self, chat: bool, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _envelope(self, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.chat else ""),
                "created": self.created, "model": self.model}

    def chunk(self, text: str | None, finish_reason: str | None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        out = self._envelope(chunk=True) | {"choices": [choice]}
        return out | {"usage": None} if self.include_usage else out

    def usage_chunk(self, last: RequestOutput) -> dict:
        return self._envelope(chunk=True) | {"choices": [], "usage": usage(last)}

    def response(self, text: str, last: RequestOutput) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": last.finish_reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": last.finish_reason}
        return self._envelope(chunk=False) | {"choices": [choice], "usage": usage(last)}


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def _generate(request: Request, chat: bool) -> Response:
    arrived = time.monotonic()  # TTFT and latency count from here: parsing and tokenizing included
    state: ServerState = request.app.state.pitstop
    engine = state.engine
    parsed = (parse_chat if chat else parse_completion)(await read_json(request))
    if parsed.model != state.model_name:
        raise not_found(f"the model {parsed.model!r} does not exist; this server serves {state.model_name!r}",
                        "model", "model_not_found")
    if not engine.is_healthy:
        raise engine_unavailable(engine.dead_reason)
    prompt_field = "messages" if chat else "prompt"
    try:
        prompt_ids = await _tokenize(engine, parsed)
        engine.validate_request(prompt_ids, parsed.pin_ttl_s)
    except InvalidRequestError as exc:
        raise bad_request(str(exc), prompt_field if exc.param == "prompt" else exc.param) from None
    shapes = _Shapes(chat, state.model_name, parsed.include_usage)
    outputs = engine.generate(prompt_ids, parsed.resolved_params(len(prompt_ids), engine.max_model_len),
                              request_id=shapes.id, priority=parsed.priority, session_id=parsed.session_id,
                              pin_ttl_s=parsed.pin_ttl_s)
    endpoint = request.url.path
    if parsed.stream:
        return SSEResponse(_events(outputs, shapes, state.metrics, endpoint, arrived))
    return await _whole(request, outputs, shapes, state.metrics, endpoint, arrived)


async def _tokenize(engine: AsyncEngine, parsed: GenerateRequest) -> list[int]:
    if isinstance(parsed.prompt, list):
        return parsed.prompt
    text = parsed.prompt
    if parsed.messages is not None:
        if engine.tokenizer is None:
            raise bad_request("this engine has no tokenizer to render chat messages", "messages")
        try:
            text = engine.tokenizer.apply_chat_template(parsed.messages, tools=parsed.tools,
                                                        add_generation_prompt=True)
        except Exception as exc:  # template errors (raise_exception, missing template) come from the input
            raise bad_request(f"could not render the chat template: {exc}", "messages") from None
    assert text is not None
    if len(text) > _INLINE_TOKENIZE_CHARS:
        return await asyncio.to_thread(engine.encode, text)
    return engine.encode(text)


async def _collect(outputs: AsyncIterator[RequestOutput], started: float) -> tuple[str, RequestOutput, float]:
    parts: list[str] = []
    ttft = None
    last: RequestOutput | None = None
    async with aclosing(outputs):
        async for out in outputs:
            ttft = ttft if ttft is not None else time.monotonic() - started
            parts.append(out.text_delta)
            last = out
    assert last is not None, "a generation always ends with a finished output or an error"
    return "".join(parts), last, ttft or 0.0


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read: the next ASGI message for this request is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _whole(request: Request, outputs: AsyncIterator[RequestOutput], shapes: _Shapes,
                 metrics: ServerMetrics, endpoint: str, started: float) -> Response:
    work = asyncio.ensure_future(_collect(outputs, started))
    disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not work.done():  # the client left (or we were cancelled): stop generating for nobody
            work.cancel()
            with suppress(asyncio.CancelledError):
                await work
    if work.cancelled():
        metrics.requests.labels(endpoint, "abort").inc()
        return Response(status_code=499)
    try:
        text, last, ttft = work.result()
    except EngineDeadError as exc:
        raise engine_unavailable(str(exc)) from None
    metrics.observe_finished(endpoint, last, ttft, time.monotonic() - started)
    return JSONResponse(shapes.response(text, last))


async def _events(outputs: AsyncIterator[RequestOutput], shapes: _Shapes, metrics: ServerMetrics,
                  endpoint: str, started: float) -> AsyncGenerator[bytes, None]:
    ttft = None
    last: RequestOutput | None = None
    failed = False
    try:
        if shapes.chat:
            yield sse_event(shapes.chunk(None, None, role=True))
        async with aclosing(outputs):
            async for out in outputs:
                ttft = ttft if ttft is not None else time.monotonic() - started
                last = out
                if shapes.chat:
                    if out.text_delta:
                        yield sse_event(shapes.chunk(out.text_delta, None))
                    if out.finished:
                        yield sse_event(shapes.chunk(None, out.finish_reason))
                elif out.text_delta or out.finished:
                    yield sse_event(shapes.chunk(out.text_delta, out.finish_reason))
        if last is not None:
            if shapes.include_usage:
                yield sse_event(shapes.usage_chunk(last))
            metrics.observe_finished(endpoint, last, ttft, time.monotonic() - started)
    except EngineDeadError as exc:  # the status line is long gone: the error travels as an event
        failed = True
        metrics.observe_error(endpoint, 503)
        yield sse_event(error_body(503, f"the engine is not available: {exc}", code="engine_unavailable"))
    except InvalidRequestError as exc:
        failed = True
        metrics.observe_error(endpoint, 400)
        yield sse_event(error_body(400, str(exc), exc.param))
    finally:
        if not failed and (last is None or not last.finished):  # the client went away
            metrics.requests.labels(endpoint, "abort").inc()
    if not failed:  # a broken stream ends with its error event, never with a clean [DONE]
        yield DONE
