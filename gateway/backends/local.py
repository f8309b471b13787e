"""An in-process engine instance (the embedded default's backend): no HTTP hop at all."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.beam_generation import BeamGeneration, generation_for
from engine.openai_embeddings import embed, parse_embedding_request
from engine.openai_generation import OpenAIGeneration
from engine.request_span import RequestSpan
from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError
from engine.server.protocol import parse_chat, parse_completion
from engine.server.tokenize import prompt_token_ids
from gateway.backends.base import BackendError, CallContext, Kind


def _as_backend_error(exc: Exception) -> BackendError:
    if isinstance(exc, APIError):
        return BackendError(exc.status, exc.message, retryable=exc.status >= 500, param=exc.param, code=exc.code)
    if isinstance(exc, InvalidRequestError):
        return BackendError(400, str(exc), retryable=False, param=exc.param, code=exc.code)
    return BackendError(503, f"engine instance unavailable: {exc}", retryable=True, code="engine_unavailable")


class LocalEngineBackend:
    probes_health = True  # `healthy()` reads the engine's step loop (gateway/health_checks.py)
    accepts_session = True
    uses_rank = True
    native_tools = True
    anthropic_fields = False

    def __init__(self, engine: AsyncEngine, served_model: str, reasoning_parser: str | None = None,
                 tool_call_parser: str | None = None, lora: str | None = None, serves_embeddings: bool = False) -> None:
        self.engine = engine
        self.serves_embeddings = serves_embeddings  # a model marked `mode: embedding` (engine/openai_embeddings.py)
        self.served_model = served_model
        self.lora = lora  # a LoRA adapter the engine serves (engine/lora_registry.py); None: its base model
        self.parsers = {"reasoning_parser": reasoning_parser, "tool_call_parser": tool_call_parser}

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.shutdown()

    async def healthy(self) -> bool:
        return self.engine.is_healthy

    async def context_window(self) -> int | None:
        return self.engine.max_model_len

    async def count_tokens(self, body: dict) -> int | None:
        """Exact: the chat rendered and encoded as its generation would be."""
        try:
            return len(await prompt_token_ids(self.engine, body, self.served_model))
        except (APIError, InvalidRequestError) as exc:
            raise _as_backend_error(exc) from None

    async def _generation(self, kind: Kind, body: dict, ctx: CallContext, stream: bool) -> OpenAIGeneration | BeamGeneration:
        if kind == "embedding":
            raise BackendError(400, f"the model {self.served_model!r} runs on Pitstop's engine, which serves "
                               "embeddings only for a model marked model_info.mode: embedding", retryable=False,
                               param="model", code="model_not_supported")
        body = {**body, "model": self.served_model, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        try:
            parsed = parse_chat(body) if kind == "chat" else parse_completion(body)
            if not self.engine.is_healthy:
                raise EngineDeadError(self.engine.dead_reason or "stopped")
            generation = generation_for(self.engine, parsed, kind == "chat", self.served_model, ctx.request_id,
                                        lora=self.lora, **self.parsers)  # or a beam search
            if ctx.trace is not None:  # the engine's own span (as `pitstop engine serve` records), under the call's
                generation.on_end = RequestSpan(ctx.trace.tracing, ctx.trace.span, kind="internal")
            await generation.start(priority=ctx.priority, session_id=ctx.session_id, pin_ttl_s=ctx.pin_ttl_s,
                                   hints=ctx.hints)
        except (APIError, InvalidRequestError, EngineDeadError) as exc:
            raise _as_backend_error(exc) from None
        return generation

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        if kind in ("rerank", "score", "classify"):  # in this process a classifier's (gateway/backends/cross_encoder.py)
            raise BackendError(400, f"the model {self.served_model!r} is a generative model on Pitstop's engine, not "
                               "a cross-encoder or classifier: mark it model_info.mode: embedding to rerank by cosine",
                               retryable=False, param="model", code="model_not_supported")
        if kind == "moderation":  # the config refuses `mode: moderation` on engines too
            raise BackendError(400, f"the model {self.served_model!r} runs on Pitstop's engine, which has no "
                               "moderation classifier", retryable=False, param="model", code="model_not_supported")
        if kind == "embedding" and self.serves_embeddings:
            try:
                parsed = parse_embedding_request({**body, "model": self.served_model})
                if not self.engine.is_healthy:
                    raise EngineDeadError(self.engine.dead_reason or "stopped")
                return await embed(self.engine, parsed, self.served_model, self.lora)
            except (APIError, InvalidRequestError, EngineDeadError) as exc:
                raise _as_backend_error(exc) from None
        generation = await self._generation(kind, body, ctx, stream=False)
        try:
            return await generation.whole()
        except (InvalidRequestError, EngineDeadError) as exc:
            raise _as_backend_error(exc) from None

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        generation = await self._generation(kind, body, ctx, stream=True)
        chunks = generation.chunks()
        try:
            async for chunk in chunks:
                yield chunk
        except (InvalidRequestError, EngineDeadError) as exc:
            raise _as_backend_error(exc) from None
        finally:
            await chunks.aclose()
