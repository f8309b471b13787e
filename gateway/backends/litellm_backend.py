"""API providers and other servers through litellm's async API (provider strings such as
`openai/gpt-4o-mini`, `anthropic/...`, `hosted_vllm/...` with `api_base`). litellm is imported on
first use: it is slow to import and the embedded default does not need it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any, get_args

from engine.rank_policy import DEFAULT_HORIZON_S
from gateway.anthropic_fields import takes_anthropic_fields
from gateway.backends.answers import (
    checked_answer,
    checked_chunk,
    checked_embeddings,
    checked_moderation,
    checked_rerank,
)
from gateway.backends.base import MEDIA_KINDS, BackendError, CallContext, Kind
from gateway.backends.litellm_media import media_complete, speech_chunks
from gateway.backends.openai_tokens import counts_as_openai, listed_window, openai_prompt_tokens
from gateway.guardrails_config import Category
from gateway.ranking import vllm_priority as rank_priority

# litellm otherwise fetches its price map from the internet at import time, and catalogs or tokenizers on
# first use: it has bundled copies of what Pitstop uses.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")


def _litellm() -> Any:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


# litellm's errors for an upstream it could not reach or whose answer it could not read: their status
# (500, or the upstream's 200) is not an answer of the upstream's, so the gateway's is a 502. Its
# generic `APIError` with a 500 is such a reading error (an upstream's own 500 is `InternalServerError`).
_BAD_GATEWAY = ("APIConnectionError", "APIResponseValidationError")


def _as_backend_error(exc: Exception, mid_stream: bool = False) -> BackendError:
    """`mid_stream`: raised while reading a stream, where any failure is the upstream's (the HTTP
    backend's 502 `upstream stream failed`), whatever litellm's status says."""
    exc = getattr(exc, "original_exception", None) or exc  # MidStreamFallbackError wraps the cause
    status = getattr(exc, "status_code", None)
    if mid_stream or not isinstance(status, int) or status < 400 or type(exc).__name__ in _BAD_GATEWAY \
            or (type(exc).__name__ == "APIError" and status == 500):
        status = 502
    if status == 408:  # litellm's Timeout: the deployment was slow, not the client (as the HTTP backend: 504)
        status = 504
    message = str(getattr(exc, "message", None) or exc)
    message = message.split("Traceback (most recent call last)", 1)[0].strip()  # litellm's, not the client's
    code = "context_length_exceeded" if type(exc).__name__ == "ContextWindowExceededError" else None
    return BackendError(status, message[:1000] or type(exc).__name__, retryable=status == 429 or status >= 500,
                        code=code)


# The openai SDK's field names of the moderation categories (`self_harm_intent`), as OpenAI's own.
_OPENAI_CATEGORY = {name.replace("/", "_").replace("-", "_"): name for name in get_args(Category)}

# litellm sends token-id prompts to these providers only; for others it raises a plain Exception (a 500).
_TOKEN_PROMPT_PROVIDERS = {"openai", "azure", "azure_text", "text-completion-openai", "text-completion-codestral"}


def _check_prompt(kind: Kind, body: dict, provider: str) -> None:
    prompt = body.get("prompt")
    if kind == "completion" and isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt) \
            and provider not in _TOKEN_PROMPT_PROVIDERS:
        raise BackendError(400, f"token-id prompts are not supported for {provider!r} models; send text",
                           retryable=False, param="prompt", code="unsupported_prompt")


def _to_dict(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else obj.model_dump(exclude_none=False)


def _is_empty_choice(choice: dict) -> bool:
    delta = choice.get("delta") or {}
    return not choice.get("finish_reason") and not choice.get("text") and not any(delta.values())


def _stream_chunk(obj: Any) -> dict:
    """litellm's stream chunks in OpenAI's shape: its usage chunk carries an empty choice (OpenAI's has
    `choices: []`), and its text-completion chunks may say `text: null` (OpenAI: a string)."""
    chunk = _to_dict(obj)
    choices = chunk.get("choices") or []
    if chunk.get("usage") and choices and all(_is_empty_choice(c) for c in choices):
        chunk["choices"] = []
    for choice in chunk["choices"] or ():
        if "text" in choice and choice["text"] is None:
            choice["text"] = ""
    return chunk


def _trace_headers(kwargs: dict, ctx: CallContext) -> None:
    """A traced call's W3C `traceparent`, as litellm's `extra_headers` (its OpenAI-compatible providers, vLLM
    among them, send them on; a provider whose client builds its own headers may drop them)."""
    if ctx.trace is not None:
        kwargs["extra_headers"] = {**(kwargs.get("extra_headers") or {}), **ctx.trace.headers()}


class LitellmBackend:
    def __init__(self, params: dict[str, Any], vllm_priority: bool = False,
                 rank_horizon_s: float = DEFAULT_HORIZON_S) -> None:
        self.params = {k: v for k, v in params.items() if v is not None}
        self.rank_horizon_s = rank_horizon_s  # aging of the rank key sent to vLLM as `priority`
        self.provider = str(self.params.get("model", "")).split("/", 1)[0]
        # vLLM accepts `priority` (lower first); litellm passes it through extra_body.
        self.accepts_session = self.uses_rank = vllm_priority
        self.native_tools = False  # not every provider litellm speaks to has them: sent as functions
        self.anthropic_fields = takes_anthropic_fields(str(self.params.get("model", "")))  # Claude's hosts
        self.serves_embeddings = True

    async def start(self) -> None:
        _litellm()

    async def close(self) -> None:
        return None

    async def healthy(self) -> bool:
        return True

    async def context_window(self) -> int | None:
        return listed_window(str(self.params.get("model", "")))

    async def count_tokens(self, body: dict) -> int | None:
        """OpenAI's models, with their tiktoken encoding (gateway/backends/openai_tokens.py); None for others."""
        model = str(self.params.get("model", ""))
        return await openai_prompt_tokens(model, body) if counts_as_openai(model) else None

    def _kwargs(self, body: dict, ctx: CallContext, stream: bool) -> dict:
        kwargs = {k: v for k, v in body.items() if k not in ("model", "stream", "stream_options")}
        kwargs.update(self.params, stream=stream, timeout=ctx.timeout_s, num_retries=0)
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        _trace_headers(kwargs, ctx)
        if self.accepts_session and ctx.hints.rank_score is not None:  # the aged rank key in its priority class
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}),
                                    "priority": rank_priority(ctx, self.rank_horizon_s)}
        elif self.accepts_session and ctx.priority:
            kwargs["extra_body"] = {**kwargs.get("extra_body", {}), "priority": int(ctx.priority)}
        return kwargs

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        litellm = _litellm()
        if kind == "embedding":
            return await self._embed(litellm, body, ctx)
        if kind == "rerank":
            return await self._rerank(litellm, body, ctx)
        if kind in ("classify", "score"):  # vLLM's own endpoints: litellm has no call for them
            raise BackendError(400, f"the model {body.get('model')!r} is served through litellm ({self.provider}/), "
                               f"which has no /{kind}: serve it over the direct transport (hosted_vllm/ or "
                               "pitstop-engine/ with api_base)", retryable=False, param="model",
                               code="model_not_supported")
        if kind == "moderation":
            return await self._moderate(litellm, body, ctx)
        if kind in MEDIA_KINDS:
            return await media_complete(litellm, self.params, kind, body, ctx, _as_backend_error, _to_dict)
        call = litellm.acompletion if kind == "chat" else litellm.atext_completion
        _check_prompt(kind, body, self.provider)
        try:
            answer = _to_dict(await call(**self._kwargs(body, ctx, False)))
        except Exception as exc:
            raise _as_backend_error(exc) from None
        return checked_answer(answer)

    async def _embed(self, litellm: Any, body: dict, ctx: CallContext) -> dict:
        kwargs = {k: v for k, v in body.items() if k != "model"}
        kwargs.update(self.params, timeout=ctx.timeout_s, num_retries=0)
        _trace_headers(kwargs, ctx)
        try:
            answer = _to_dict(await litellm.aembedding(**kwargs))
        except Exception as exc:
            raise _as_backend_error(exc) from None
        return checked_embeddings(answer)

    async def _rerank(self, litellm: Any, body: dict, ctx: CallContext) -> dict:
        """litellm's `arerank`: Cohere, Jina, Voyage, a vLLM server (`hosted_vllm/`) and the other providers it
        reranks with, each answering in Cohere's shape. Its providers take no `extra_headers`: no traceparent."""
        kwargs = {k: v for k, v in body.items() if k != "model"}
        kwargs.update(self.params, timeout=ctx.timeout_s, num_retries=0)
        try:
            answer = _to_dict(await litellm.arerank(**kwargs))
        except Exception as exc:
            raise _as_backend_error(exc) from None
        return checked_rerank(answer)

    async def _moderate(self, litellm: Any, body: dict, ctx: CallContext) -> dict:
        """litellm's `amoderation`: OpenAI's /moderations through OpenAI's client (at `api_base` where one is
        set), the only way litellm moderates. It takes no timeout (nor `extra_headers`): the call is cut at
        the context's, and its client's own retries of a 5xx or 429 (two) happen inside it. Its results
        hold each category twice (OpenAI's name and the SDK's field name): given back under OpenAI's."""
        kwargs = {k: v for k, v in self.params.items() if k != "model"}
        try:
            async with asyncio.timeout(ctx.timeout_s):
                answer = _to_dict(await litellm.amoderation(input=body["input"], model=self.params.get("model"),
                                                            **kwargs))
        except TimeoutError:
            raise BackendError(504, "upstream timed out", retryable=True) from None
        except Exception as exc:
            raise _as_backend_error(exc) from None
        for result in answer.get("results") or ():
            for name in ("categories", "category_scores", "category_applied_input_types"):
                if isinstance(result, dict) and isinstance(result.get(name), dict):
                    result[name] = {_OPENAI_CATEGORY.get(k, k): v for k, v in result[name].items() if v is not None}
        return checked_moderation(answer)

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        litellm = _litellm()
        if kind == "speech":
            async for chunk in speech_chunks(litellm, self.params, body, ctx, _as_backend_error):
                yield chunk
            return
        call = litellm.acompletion if kind == "chat" else litellm.atext_completion
        _check_prompt(kind, body, self.provider)
        try:
            response = await call(**self._kwargs(body, ctx, True))
        except Exception as exc:
            raise _as_backend_error(exc) from None
        try:
            async for chunk in response:
                yield checked_chunk(_stream_chunk(chunk))
        except BackendError:
            raise
        except Exception as exc:
            raise _as_backend_error(exc, mid_stream=True) from None
