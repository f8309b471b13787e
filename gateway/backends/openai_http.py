"""An OpenAI-compatible server over HTTP, spoken to directly with aiohttp: Pitstop's own engine
instances (`pitstop-engine/...`, which take session_id / priority / pin_ttl_s) and other
OpenAI-compatible servers (vLLM, SGLang). One pooled session per deployment; aiohttp rather than
httpx because it costs about half the CPU per proxied request (bench/gateway_overhead.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp

from engine.rank_policy import DEFAULT_HORIZON_S
from gateway.backends.answers import (
    checked_answer,
    checked_chunk,
    checked_moderation,
    checked_rerank,
    checked_scores,
    embeddings_answer,
    strict_json,
)
from gateway.backends.base import MEDIA_KINDS, BackendError, CallContext, Kind
from gateway.backends.openai_media import checked_images, checked_video, post_media, speech_chunks, transcript
from gateway.backends.openai_tokens import counts_as_openai, listed_window, openai_prompt_tokens
from gateway.ranking import vllm_priority

# vLLM serves /rerank beside /v1 as well; under api_base (…/v1) it is /v1/rerank, which it serves too.
_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings", "rerank": "/rerank",
          "score": "/score", "moderation": "/moderations"}
_CHECKED = {"rerank": checked_rerank, "moderation": checked_moderation, "classify": checked_scores,
            "score": checked_scores}  # else a chat's or completion's
_TEMPLATE_FIELDS = ("add_generation_prompt", "continue_final_message", "chat_template_kwargs")
TOKENIZE_TIMEOUT_S = 10.0


def _error_from_response(status: int, raw: bytes) -> BackendError:
    message, param, code = raw.decode(errors="replace")[:500] or f"upstream answered {status}", None, None
    try:
        error = json.loads(raw)["error"]
        message, param, code = error.get("message", message), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return BackendError(status, message, retryable=status == 429 or status >= 500, param=param, code=code)


# An idle connection to the upstream is let go after this long: under the 5 s that uvicorn (vLLM's, SGLang's
# servers) and Node keep one, so the gateway never sends a request on a connection the server is closing
# (at 30 s, requests after about 5 s idle failed now and then with ServerDisconnectedError: a 502, or a
# retry and a failure counted against the deployment; tests/gateway/test_keep_alive.py).
UPSTREAM_IDLE_S = 4.0


def _connection_error(exc: BaseException, started: bool) -> BackendError:
    if isinstance(exc, TimeoutError):
        return BackendError(504, "upstream timed out", retryable=not started)
    return BackendError(502, f"upstream {'stream broke' if started else 'unreachable'}: {exc!r}",
                        retryable=not started)


class OpenAIHTTPBackend:
    probes_health = True  # `healthy()` asks the server (gateway/health_checks.py)

    def __init__(self, api_base: str, served_model: str, api_key: str | None = None,
                 accepts_session: bool = False, send_priority: bool = False, connect_timeout_s: float = 10.0,
                 max_connections: int = 1000, rank_horizon_s: float = DEFAULT_HORIZON_S,
                 provider_model: str | None = None, serves_embeddings: bool = True) -> None:
        self.api_base = api_base.rstrip("/")
        self.rank_horizon_s = rank_horizon_s  # aging of the rank key sent to vLLM as `priority`
        self.served_model = served_model
        self.accepts_session = accepts_session
        self.send_priority = accepts_session or send_priority  # vLLM takes `priority` (lower first)
        self.uses_rank = self.send_priority
        self.serves_embeddings = serves_embeddings  # a Pitstop engine's: when its model is marked `mode: embedding`
        self.native_tools = accepts_session
        self.anthropic_fields = False
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # vLLM's /tokenize, beside /v1 (Pitstop's engines serve it too); None until asked, False once the
        # server said it has none.
        self._tokenize_url = self.api_base.removesuffix("/v1") + "/tokenize"
        self._tokenizes: bool | None = None
        self._window: int | None = None  # the served model's max_model_len from /models once read; 0: none listed
        self.provider_model = provider_model  # litellm's string (`openai/gpt-4o`): OpenAI's models count with tiktoken

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._closed:  # shut down: a late call must not open a session nobody will close
            raise aiohttp.ClientConnectionError(f"the backend for {self.api_base} is shut down")
        if self._session is None or self._session.closed:  # made on the loop that uses it
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=UPSTREAM_IDLE_S)
            self._session = aiohttp.ClientSession(headers=self.headers, connector=connector)
        return self._session

    async def start(self) -> None:
        self._closed = False
        if (model := self.provider_model) is not None:  # litellm's import and map lookups take seconds: not on the loop
            await asyncio.to_thread(lambda: (counts_as_openai(model), listed_window(model)))

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()

    async def healthy(self) -> bool:
        try:
            async with self.session.get(f"{self.api_base}/models",
                                        timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def context_window(self) -> int | None:
        """OpenAI's models: litellm's map; else the served model's `max_model_len` as /models lists it (vLLM's
        and Pitstop's engines do), read once."""
        if self.provider_model is not None:
            return listed_window(self.provider_model)
        if self._window is None:
            try:
                async with self.session.get(f"{self.api_base}/models",
                                            timeout=aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_S)) as response:
                    listed = (await response.json(content_type=None)).get("data") if response.status == 200 else None
            except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
                return None  # asked again next time
            if not isinstance(listed, list):
                return None
            window = next((m.get("max_model_len") for m in listed
                           if isinstance(m, dict) and m.get("id") == self.served_model), None)
            self._window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else 0
        return self._window or None

    async def count_tokens(self, body: dict) -> int | None:
        """OpenAI's models with their tiktoken encoding (gateway/backends/openai_tokens.py); else the
        server's own count, where it serves vLLM's /tokenize; None where it does not, or fails."""
        if self.provider_model is not None and counts_as_openai(self.provider_model):
            return await openai_prompt_tokens(self.provider_model, body)
        if self._tokenizes is False:
            return None
        request = {"model": self.served_model, "messages": body.get("messages"),
                   **{name: body[name] for name in _TEMPLATE_FIELDS if name in body}}
        if body.get("tools") and body.get("tool_choice") != "none":  # as generation renders them
            request["tools"] = body["tools"]
        try:
            async with self.session.post(self._tokenize_url, json=request,
                                         timeout=aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_S)) as response:
                if response.status in (404, 405, 501):
                    self._tokenizes = False
                    return None
                counted = (await response.json(content_type=None)).get("count") if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            return None
        if isinstance(counted, bool) or not isinstance(counted, int):
            return None
        self._tokenizes = True
        return counted

    def _body(self, kind: Kind, body: dict, ctx: CallContext, stream: bool) -> dict:
        if kind in ("embedding", "rerank", "classify", "score", "moderation"):  # no stream field, no scheduling fields
            return {**body, "model": self.served_model}
        out = {**body, "model": self.served_model, "stream": stream}
        if stream:
            out["stream_options"] = {"include_usage": True}
        if self.accepts_session and ctx.session_id is not None:
            out["session_id"] = ctx.session_id
            if ctx.pin_ttl_s is not None:
                out["pin_ttl_s"] = ctx.pin_ttl_s
        if self.accepts_session:
            if ctx.hints.rank_score is not None:
                out["rank_score"] = ctx.hints.rank_score
            if ctx.hints.program_start is not None:
                out["program_start"] = ctx.hints.program_start
            if ctx.hints.in_program:
                out["in_program"] = True
        if self.send_priority and not self.accepts_session and ctx.hints.rank_score is not None:
            # The aged rank key within the request's priority class (gateway/ranking.py): a class passed
            # alone would sort a less urgent request (priority 1) before every ranked one (~1.8e10).
            out["priority"] = vllm_priority(ctx, self.rank_horizon_s)
        elif self.send_priority and ctx.priority:
            out["priority"] = ctx.priority if self.accepts_session else int(ctx.priority)
        return out

    def _timeout(self, ctx: CallContext) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=ctx.timeout_s, sock_connect=self.connect_timeout_s)

    @staticmethod
    def _trace_headers(ctx: CallContext) -> dict[str, str] | None:
        """W3C `traceparent` for a traced call: the server's span (vLLM's, a Pitstop engine's) joins the trace."""
        return None if ctx.trace is None else ctx.trace.headers()

    async def _media(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        """A transcription, translation or image generation (gateway/backends/openai_media.py)."""
        try:
            status, raw, content_type = await post_media(self.session, self.api_base, self.served_model, kind, body,
                                                         self._timeout(ctx), self._trace_headers(ctx))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc, started=False) from None
        if status != 200:
            raise _error_from_response(status, raw)
        if kind not in ("image", "image_edit", "video"):
            return transcript(raw, content_type)
        try:
            return (checked_video if kind == "video" else checked_images)(strict_json(raw))
        except ValueError:
            raise BackendError(502, "upstream sent invalid JSON", retryable=True, code="bad_upstream_response") from None

    def _url(self, kind: Kind) -> str:
        if kind == "classify":  # vLLM serves /classify beside /v1 only
            return self.api_base.removesuffix("/v1") + "/classify"
        return self.api_base + _PATHS[kind]

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        if kind in MEDIA_KINDS:
            return await self._media(kind, body, ctx)
        try:
            async with self.session.post(self._url(kind), json=self._body(kind, body, ctx, False),
                                         timeout=self._timeout(ctx), headers=self._trace_headers(ctx)) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc, started=False) from None
        if status != 200:
            raise _error_from_response(status, raw)
        if kind == "embedding":
            return embeddings_answer(raw, skim=body.get("encoding_format") != "base64")
        try:
            answer = strict_json(raw)
        except ValueError:
            raise BackendError(502, "upstream sent invalid JSON", retryable=True, code="bad_upstream_response") from None
        return _CHECKED.get(kind, checked_answer)(answer)

    async def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        started = False
        if kind == "speech":  # the audio as it arrives
            try:
                async for chunk in speech_chunks(self.session, self.api_base, self.served_model, body,
                                                 self._timeout(ctx), self._trace_headers(ctx), _error_from_response):
                    started = True
                    yield chunk
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _connection_error(exc, started) from None
            return
        try:
            async with self.session.post(self.api_base + _PATHS[kind], json=self._body(kind, body, ctx, True),
                                         timeout=self._timeout(ctx), headers=self._trace_headers(ctx)) as response:
                if response.status != 200:
                    raise _error_from_response(response.status, await response.read())
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        await response.read()  # drain, so the connection goes back to the pool
                        return
                    chunk = strict_json(data)
                    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                        error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
                        raise BackendError(502, f"upstream stream failed: {error.get('message')}",
                                           retryable=False, code=error.get("code"))
                    chunk = checked_chunk(chunk)
                    started = True
                    yield chunk
                raise BackendError(502, "upstream stream ended without [DONE]", retryable=False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc, started) from None
        except ValueError:
            raise BackendError(502, "upstream sent an invalid stream event", retryable=False,
                               code="bad_upstream_response") from None
