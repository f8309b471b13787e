"""POST /v1/chat/completions, /v1/completions and /v1/embeddings, and the APIs served as a chat
(/v1/responses, /v1/messages, Gemini's generateContent: gateway/dialects.py): authenticate, limit, parse,
route, then serve (gateway/serving.py), and leave one outcome row; a background response's run, on its own
(gateway/background.py). Errors keep the API's shape (OpenAI's, Anthropic's for Messages, Google's for Gemini)."""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import aclosing
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from engine.server.errors import APIError
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from engine.server.sse import SSEResponse
from gateway import tracing
from gateway.auth import Caller
from gateway.backends.base import BackendError, Kind
from gateway.background import CANCELLED, SHUTDOWN, TAKEN_ELSEWHERE
from gateway.budget_holds import budget_hold, team_hold
from gateway.compaction import compact_conversation, compact_turn
from gateway.dialects import Dialect, DialectName, error_response
from gateway.embedding_cache import embed_cached
from gateway.gemini_stream import GeminiTurn
from gateway.limit_gate import LimitExceeded
from gateway.messages_stream import MessagesTurn
from gateway.moderation import serve_moderation_body
from gateway.outcomes import OutcomeDraft
from gateway.request_body import parse_embeddings_request, parse_proxy_request
from gateway.rerank import serve_rerank_body
from gateway.serving import (
    as_api_error,
    embed,
    internal_error,
    response_headers,
    serve,
    serve_cached,
    unless_disconnected,
)
from gateway.state import GatewayState
from gateway.stored_responses import ResponsesTurn
from gateway.truncation import fit_context

Endpoint = Kind | DialectName
log = logging.getLogger("pitstop.gateway")


async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "chat")


async def completions(request: Request) -> Response:
    return await _proxy(request, "completion")


async def embeddings(request: Request) -> Response:
    return await _proxy(request, "embedding")


async def responses(request: Request) -> Response:
    """OpenAI's Responses API, served as a chat (gateway/responses_api.py)."""
    return await _proxy(request, "responses")


async def compact_response(request: Request) -> Response:
    """POST /v1/responses/compact (gateway/compaction.py): its pass, served as a chat, is its request."""
    state: GatewayState = request.app.state.pitstop
    with state.drain.track():
        caller = await state.auth.authenticate(request.headers)
        raw = await read_json(request, state.settings.server.max_body_bytes)
        body, headers = await compact_conversation(state, functools.partial(serve_body, state), caller, raw)
    return SafeJSONResponse(body, headers=headers)


async def messages(request: Request) -> Response:
    """Anthropic's Messages API, served as a chat (gateway/messages_api.py)."""
    return await _proxy(request, "messages")


async def gemini(request: Request) -> Response:
    """Google's Gemini API's generateContent, served as a chat (gateway/gemini_endpoints.py routes it)."""
    return await _proxy(request, "gemini")


async def _proxy(request: Request, kind: Endpoint) -> Response:
    state: GatewayState = request.app.state.pitstop
    draft = OutcomeDraft()
    if state.tracing is not None:  # its server span, ended with its outcome (OutcomeRecorder.finish)
        draft.trace = tracing.request_started(state.tracing, request, kind)
    with state.drain.track():
        return await _answer(request, kind, state, draft)


async def serve_body(state: GatewayState, caller: Caller, endpoint: Endpoint, raw: Any,
                     batch_id: str | None, extra: dict | None = None) -> Response:
    """A request that came in no HTTP request of its own (a batch's line, gateway/batches.py, a rerank's
    served by gateway/rerank.py, a moderation's by gateway/moderation.py; a vector store's embeddings,
    gateway/embedders.py; a compaction pass, gateway/compaction.py), served as one that did, from `caller`:
    its answer or its error, and its outcome row (with `extra`). Whole answers only."""
    if endpoint == "rerank":  # its own endpoint, not a proxied one (a batch's /v1/rerank lines)
        return await serve_rerank_body(state, caller, raw, batch_id, extra)
    if endpoint == "moderation":  # likewise (a batch's /v1/moderations lines)
        return await serve_moderation_body(state, caller, raw, batch_id, extra)
    draft = OutcomeDraft(caller=caller, batch_id=batch_id)
    draft.extra |= extra or {}
    with state.drain.track():
        return await _answer(None, endpoint, state, draft, raw)


async def resume_background(state: GatewayState, caller: Caller, row: dict) -> Response:
    """A background response taken over from a replica that stopped (gateway/background.py): its request
    served again from `caller`, as the same response, and not streamed (a stream following it gets its
    end). The Response is `queued` once its run started, else the refusal (a 4xx or 5xx)."""
    draft = OutcomeDraft(caller=caller)
    draft.extra["taken_over"] = row["id"]  # its first run's row has another request id
    with state.drain.track():
        return await _answer(None, "responses", state, draft, {**row["request"], "stream": False}, resumed=row)


async def _answer(request: Request | None, endpoint: Endpoint, state: GatewayState, draft: OutcomeDraft,
                  raw: Any = None, resumed: dict | None = None) -> Response:
    dialect: Dialect | None = None
    handed_off = False  # to a stream, or a background run: it ends the dialect's turn, once it is over
    if endpoint in ("responses", "messages", "gemini"):
        draft.endpoint = endpoint  # the row's, and the shape of its errors
    headers = request.headers if request is not None else {}
    try:
        if request is not None:
            draft.caller = await state.auth.authenticate(request.headers)
            raw = await read_json(request, state.settings.server.max_body_bytes)
        assert draft.caller is not None
        kind = endpoint
        if endpoint == "responses":  # served as the chat it stands for, and turned back at the end
            dialect = await state.responses.begin(raw, draft.request_id, draft.caller.key_id, resumed)
        elif endpoint == "messages":
            dialect = MessagesTurn(raw, draft.request_id, headers)
        elif endpoint == "gemini":  # its model and method are the path's (gateway/gemini_endpoints.py)
            assert request is not None
            dialect = GeminiTurn(raw, draft.request_id, *request.state.gemini_call)
        if dialect is not None:
            raw, kind = dialect.chat, "chat"
        draft.request = parsed = (parse_embeddings_request(raw, headers) if kind == "embedding"
                                  else parse_proxy_request(raw, kind, headers))
        if dialect is not None:
            dialect.adopt(parsed)
        draft.caller.check_model(parsed.model)
        state.routes.adopt(parsed.model)  # a wildcard's model is a deployment before its budget hold is priced
        server = state.settings.server
        hold = budget_hold(draft.caller, parsed, state.routes, state.pool, draft.request_id,
                           server.request_timeout_s, server.num_retries + 1)
        shared = team_hold(draft.caller, hold)  # the same worst case, held of the key's team's budget
        draft.admission = await state.admit(draft.caller, hold, shared)
        draft.hold, draft.team_hold = hold, shared  # taken: the row's cost settles them
        draft.route = tracing.routed(draft.trace, state.routes.resolve, parsed)
        if isinstance(dialect, ResponsesTurn) and dialect.compaction is not None:  # before any truncation
            await compact_turn(state, functools.partial(serve_body, state), draft, dialect)
        if isinstance(dialect, ResponsesTurn) and dialect.envelope.settings["truncation"] == "auto":
            await _truncate(state, draft)
        tool_loop = dialect.mcp if isinstance(dialect, ResponsesTurn) else None
        if tool_loop is not None:  # later model calls stay on the routed model, under the turn's session
            tool_loop.connect(functools.partial(serve_body, state), draft.caller, draft.route.model_name,
                              parsed.body["messages"])
            tool_loop.session_id = dialect.session_id  # type: ignore[union-attr]
        if kind == "embedding":
            if state.cache is not None and state.cache.applies(draft):  # kept per input
                return await embed_cached(request, state, draft)
            return await embed(request, state, draft)
        background = isinstance(dialect, ResponsesTurn) and dialect.background
        if state.cache is not None and not background and tool_loop is None:  # nor is a run on its own, or tools
            kept = await unless_disconnected(request, state.cache.look_up(draft))
            if kept is not None:
                response = await serve_cached(state, draft, kind, dialect, kept)
                handed_off = isinstance(response, SSEResponse)
                return response
        if background:  # answered now, run on its own
            queued = await state.responses.run_in_background(
                dialect, draft.route.model_name, lambda: _in_background(state, draft, kind, dialect), parsed.stream)
            handed_off = True
            if not parsed.stream:
                return SafeJSONResponse(queued, headers=response_headers(draft))
            # The run's events as they come; a client that leaves does not stop it, and may resume.
            response = SSEResponse(state.responses.background.feeds[queued["id"]].follow(-1))
            response.headers.update(response_headers(draft))
            return response
        response = await serve(request, state, draft, kind, dialect)
        handed_off = isinstance(response, SSEResponse)
        return response
    except (APIError, BackendError, ClientDisconnect) as exc:
        retry_after_s = exc.retry_after_s if isinstance(exc, LimitExceeded | BackendError) else None
        if isinstance(exc, LimitExceeded) and exc.admission is not None:
            draft.admission = exc.admission  # a refusal says what is left too (x-ratelimit-*), as OpenAI's
        return await _failed(state, draft, as_api_error(exc), retry_after_s)
    except Exception:  # a bug: the client still gets OpenAI's shape, the request its row
        log.exception("request %s failed inside the gateway", draft.request_id)
        return await _failed(state, draft, internal_error(draft), None)
    except asyncio.CancelledError:
        cut = state.drain.absorb()
        if cut is not None:
            return await _failed(state, draft, cut, retry_after_s=1.0, kind="aborted")
        draft.fail(499, "the client disconnected", kind="aborted")
        state.recorder.finish(draft)
        raise
    finally:
        if dialect is not None and not handed_off:  # before the answer or error goes out
            await dialect.end()


async def _truncate(state: GatewayState, draft: OutcomeDraft) -> None:
    """`truncation: auto`: the oldest turns dropped until the chat fits the routed model's context."""
    assert draft.request is not None and draft.route is not None
    parsed = draft.request
    if dropped := await fit_context(state, draft.route.model_name, parsed.body):
        draft.extra["truncated_messages"] = dropped
        state.metrics.truncated.labels(draft.route.model_name).inc()
        parsed.measure_messages()


async def _in_background(state: GatewayState, draft: OutcomeDraft, kind: Kind, turn: ResponsesTurn) -> None:
    """A background response's run (gateway/background.py), served as any request is: its turn writes its
    end to its row, a streamed one's events go to its feed; an error or a cancel ends it there too, and the
    shutdown lets it go for another replica. It leaves its outcome row."""
    assert turn.queued is not None
    feed = state.responses.background.feeds.get(turn.queued["id"])  # a streamed run's

    async def fail(error: APIError, recorded: bool = False) -> None:
        if not recorded:
            await _failed(state, draft, error, None)
        if feed is not None:
            await feed.push(turn.stream(draft.route.model_name if draft.route else "").failed(error))
        await turn.failed(error)

    with state.drain.track():
        started = asyncio.ensure_future(turn.started())  # beside the call: a write that lands late changes nothing
        try:
            served = await serve(None, state, draft, kind, turn)
            if isinstance(served, SSEResponse) and feed is not None:  # its events, for the streams following it
                async with aclosing(served.events) as events:
                    async for event in events:
                        await feed.push(event)
                if draft.status != "ok":  # it broke mid-stream: its error event went out, its row says so too
                    await turn.failed(APIError(draft.http_status, draft.error or "the stream broke"))
        except (APIError, BackendError) as exc:
            await fail(as_api_error(exc))
        except Exception:
            log.exception("background response of request %s failed inside the gateway", draft.request_id)
            await fail(internal_error(draft))
        except asyncio.CancelledError as cancel:  # a cancel (POST .../cancel), the drain's cut, or the shutdown
            cut = state.drain.absorb()
            if cut is None and cancel.args == (CANCELLED,):
                draft.fail(499, CANCELLED, kind="aborted")
                state.recorder.finish(draft)
                await turn.cancelled()
                return
            # The shutdown (its cut, or its end of the grace), or another replica took it over.
            why = cut.message if cut else str(cancel.args[0]) if cancel.args else SHUTDOWN
            draft.fail(503, why, kind="aborted")
            state.recorder.finish(draft)
            await asyncio.wait([started])  # else its `in_progress` could land after
            if why != TAKEN_ELSEWHERE:  # let go for another replica, or this one restarted, to take over
                await turn.released()
        finally:
            await asyncio.wait([started])  # no write of this run outlives it
            await turn.end()
            if feed is not None:
                await feed.end()


async def _failed(state: GatewayState, draft: OutcomeDraft, error: APIError, retry_after_s: float | None,
                  kind: str = "error") -> Response:
    draft.fail(error.status, error.message, kind=kind)
    draft.extra["code"] = error.code
    state.recorder.finish(draft)
    await draft.settled()
    response = error_response(draft.endpoint, error)
    response.headers.update(response_headers(draft))
    if retry_after_s is not None:
        response.headers["retry-after"] = str(max(1, round(retry_after_s)))
    return response
