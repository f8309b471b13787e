"""An admitted, routed request served (gateway/proxy.py admits and routes it): its agent session, its
rank, the call through the group's verification, and the answer, whole or streamed (as chat chunks, or
as a dialect's events), with its outcome row. Errors keep OpenAI's shape; a stream that breaks after it
started ends with an error event and no [DONE]."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from agent_sessions.identity import scoped_session_id
from engine.server.errors import APIError, error_body
from engine.server.json_out import SafeJSONResponse
from engine.server.sse import DONE, SSEResponse, sse_event
from gateway import verify
from gateway.backends.answers import UpstreamBytes
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.background import CANCELLED
from gateway.cache_control import CACHE_HEADER
from gateway.cached_answers import StreamAssembler, replay_chunks
from gateway.dialects import Dialect, DialectStream
from gateway.drain import CUT_MESSAGE
from gateway.outcomes import OutcomeDraft
from gateway.response_cache import CachedAnswer, ResponseCache
from gateway.routing import estimate_tokens, prompt_estimate
from gateway.semantic_cache import SIMILARITY_HEADER
from gateway.sessions import SessionCall
from gateway.state import GatewayState

T = TypeVar("T")
log = logging.getLogger("pitstop.gateway")


def response_headers(draft: OutcomeDraft) -> dict[str, str]:
    headers = {"x-pitstop-request-id": draft.request_id}
    if draft.endpoint == "messages":  # where Anthropic's SDKs read it (`message._request_id`)
        headers["request-id"] = draft.request_id
    if draft.route is not None:
        headers["x-pitstop-model"] = draft.route.model_name
        if draft.route.route_group:
            headers["x-pitstop-route-group"] = draft.route.route_group
    if dropped := draft.extra.get("truncated_messages"):  # `truncation: auto` cut the oldest turns
        headers["x-pitstop-truncated-messages"] = str(dropped)
    if replaced := (draft.extra.get("compaction") or {}).get("replaced_messages"):  # compacted first
        headers["x-pitstop-compacted-messages"] = str(replaced)
    fallback = draft.extra.get("fallback")
    if fallback and draft.route is not None and draft.route.model_name != fallback["from"]:  # another answered
        headers["x-pitstop-fallback-from"] = fallback["from"]
    if (hedge := draft.extra.get("hedge")) and hedge["hedges"] and hedge["won"]:  # a hedge went out: who answered
        headers["x-pitstop-hedged"] = hedge["won"]
    checked = draft.extra.get("verify")
    if checked and checked.get("outcome"):
        headers["x-pitstop-verify"] = checked["outcome"]
    headers |= limit_headers(draft)
    if cache := draft.extra.get("cache"):  # the response cache applied: hit, semantic-hit, coalesced or miss
        headers[CACHE_HEADER] = cache
        if "cache_age_s" in draft.extra:  # HTTP's Age: how old the kept answer is
            headers["age"] = str(int(draft.extra["cache_age_s"]))
        if "cache_similarity" in draft.extra:  # a semantic hit: how close the kept answer's question was
            headers[SIMILARITY_HEADER] = f"{draft.extra['cache_similarity']:.4f}"
    return headers


def limit_headers(draft: OutcomeDraft) -> dict[str, str]:
    """What is left of the limits when the request was admitted, as OpenAI names the rates'
    (`x-ratelimit-*-requests`, `-tokens`) and Pitstop the budget's (net of the holds of requests in
    flight): the key's, or its team's where that leaves less (gateway/limit_gate.py)."""
    admitted = draft.admission
    if admitted is None:
        return {}
    headers = {}
    if admitted.rpm_limit is not None and admitted.remaining_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(admitted.rpm_limit)
        headers["x-ratelimit-remaining-requests"] = str(admitted.remaining_requests)
    if admitted.tpm_limit is not None and admitted.remaining_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(admitted.tpm_limit)
        headers["x-ratelimit-remaining-tokens"] = str(admitted.remaining_tokens)
    if admitted.budget_usd is not None and admitted.remaining_budget_usd is not None:
        headers["x-pitstop-budget-remaining-usd"] = f"{admitted.remaining_budget_usd:.6f}"
        if admitted.budget_renews_at is not None:
            renews = datetime.fromtimestamp(admitted.budget_renews_at, UTC)
            headers["x-pitstop-budget-renews-at"] = renews.isoformat().replace("+00:00", "Z")
    return headers


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BackendError):
        return APIError(exc.status, exc.message, exc.param, exc.code)
    if isinstance(exc, ClientDisconnect):
        return APIError(400, "the client disconnected while sending the request")
    raise exc

async def serve(request: Request | None, state: GatewayState, draft: OutcomeDraft, kind: Kind,
                 dialect: Dialect | None) -> Response:
    """An admitted, routed request, served: its session, its rank, the call (whole or streamed). Without
    `request` (a background run) no client can leave."""
    assert draft.caller is not None and draft.request is not None and draft.route is not None
    parsed, route = draft.request, draft.route
    engine_session = None if parsed.session_id is None else scoped_session_id(parsed.session_id, draft.caller.key_id)
    priority = draft.caller.effective_priority(parsed.priority)  # never more urgent than the key's
    ctx = CallContext(draft.request_id, engine_session, priority, parsed.pin_ttl_s,
                      state.settings.server.request_timeout_s, trace=draft.trace,
                      estimated_tokens=prompt_estimate(parsed, state.pool.image_rules(route.model_name)),
                      moderation=draft.moderation)
    session = await state.sessions.start(parsed, draft, ctx)  # agent_sessions: affinity, hints, pin
    route, ctx = draft.route, session.ctx
    if route.decision is not None and route.route_group is not None:  # not kept on a session's model
        state.routes.groups[route.route_group].served(route.decision, estimate_tokens(parsed.prompt_text))
    if state.ranking is not None:  # rankers/: expected work (prompt + answer) on the chosen model
        ctx = await state.ranking.apply(parsed.prompt_text, route.model_name, ctx, draft,
                                        needed=state.pool.uses_rank(route.model_name),
                                        prompt_chars=parsed.chars_on(state.pool.image_rules(route.model_name)),
                                        cached_tokens=session.cached_tokens)
    if parsed.stream:  # held back first where the group verifies the pick's short answer
        # Until the first chunk (queued, prefilling, held back to verify), a client that leaves
        # cancels the call, as for a whole answer.
        streamed = verify.stream(state, draft, kind, ctx, session.prefer)
        chunks, dispatched = await unless_disconnected(request, streamed)
        draft.answered_by(dispatched)
        state.sessions.dispatched(session, dispatched.deployment)
        if keepers := _keepers(state, draft):  # the whole answer kept, once the stream has ended
            chunks = kept_as_it_streams(kind, chunks, keepers)
        stream = None if dialect is None else dialect.stream(route.model_name)
        return stream_response(state, draft, chunks, session, stream, None if dialect is None else dialect.end)
    work = verify.complete(state, draft, kind, ctx, session.prefer)  # the group's `verify:`, if any
    body, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)
    state.sessions.dispatched(session, dispatched.deployment)
    draft.take_response(body)
    draft.ttft_s = None
    if draft.usage_estimated:  # the deployment reported none it could bill from: what the row is charged
        body["usage"] = draft.estimated_usage()
    for keep in _keepers(state, draft):
        await keep(body)
    await state.sessions.finish(session, draft)
    state.recorder.finish(draft)
    await draft.settled()
    if dialect is not None:
        body = await dialect.answer(body, route.model_name)
    return SafeJSONResponse(body, headers=response_headers(draft))


async def embed(request: Request | None, state: GatewayState, draft: OutcomeDraft,
                keep: Callable[[dict], Awaitable[Any]] | None = None) -> Response:
    """An embeddings request: no ranking, session or verification, one whole answer, billed for its input."""
    assert draft.caller is not None and draft.request is not None and draft.route is not None
    ctx = CallContext(draft.request_id, priority=draft.caller.effective_priority(draft.request.priority),
                      timeout_s=state.settings.server.request_timeout_s, trace=draft.trace,
                      estimated_tokens=prompt_estimate(draft.request), moderation=draft.moderation)
    work = state.dispatcher.complete(draft.route.model_name, "embedding", draft.request.body, ctx, sent=draft.sending)
    body, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)
    draft.usage = body.get("usage")
    if keep is not None:  # the response cache's, for the vectors (gateway/embedding_cache.py)
        await keep(body)
    state.recorder.finish(draft)
    await draft.settled()
    if isinstance(body, UpstreamBytes):  # as it came: a batch of floats is not written out again
        return Response(body.raw, media_type="application/json", headers=response_headers(draft))
    if draft.usage_estimated:
        body["usage"] = draft.estimated_usage()
    return SafeJSONResponse(body, headers=response_headers(draft))


async def serve_cached(state: GatewayState, draft: OutcomeDraft, kind: Kind, dialect: Dialect | None,
                       kept: CachedAnswer) -> Response:
    """A request the response cache answers: the kept answer, whole or streamed again (as chat chunks or
    a dialect's events), with no upstream call, session or rank; its row says `cache_hit` and costs
    nothing."""
    assert draft.request is not None and draft.route is not None
    draft.extra["cache_age_s"] = round(kept.age_s, 3)
    if kept.model != draft.route.model_name:  # a group's verification served another model
        draft.route = replace(draft.route, model_name=kept.model)
    model = kept.model
    body: dict = orjson.loads(kept.body)
    if state.stored_completions.wanted(draft):  # kept under the answer's id: once, whoever asked first
        await state.stored_completions.keep(draft, body)
    if draft.request.stream:
        stream = None if dialect is None else dialect.stream(model)
        return stream_response(state, draft, replay_chunks(body, kind), SessionCall(CallContext(draft.request_id)),
                               stream, None if dialect is None else dialect.end)
    draft.take_response(body)
    state.recorder.finish(draft)
    await draft.settled()
    if dialect is not None:
        body = await dialect.answer(body, model)
    return SafeJSONResponse(body, headers=response_headers(draft))


_KEPT_FINISHES = frozenset({"stop", "length", "tool_calls", "function_call"})


def finished_well(answer: dict) -> bool:
    """Every choice ended as a model's answer ends (not cut by an error or an abort): worth keeping."""
    choices = answer.get("choices") or ()
    return bool(choices) and all(c.get("finish_reason") in _KEPT_FINISHES for c in choices)


Keeper = Callable[[dict], Awaitable[None]]


def _keepers(state: GatewayState, draft: OutcomeDraft) -> list[Keeper]:
    """Where the whole answer goes once there is one: the response cache (one that ended well), and the
    stored chat completions (a chat that asked `store: true`)."""
    keepers: list[Keeper] = []
    if draft.cache is not None and state.cache is not None:
        keepers.append(functools.partial(_keep_in_cache, state.cache, draft))
    if state.stored_completions.wanted(draft):
        keepers.append(functools.partial(state.stored_completions.keep, draft))
    return keepers


async def _keep_in_cache(cache: ResponseCache, draft: OutcomeDraft, whole: dict) -> None:
    if finished_well(whole) and draft.cache is not None and draft.route is not None:
        await cache.keep(draft.cache, draft.route.model_name, orjson.dumps(whole))


async def kept_as_it_streams(kind: Kind, chunks: AsyncIterator[dict], keepers: list[Keeper]) -> AsyncIterator[dict]:
    """The chunks as they come; once they have all come, the whole answer they make goes to `keepers`
    (not one the assembler cannot put back together)."""
    assembler = StreamAssembler(kind)
    async with aclosing(chunks):
        async for chunk in chunks:
            assembler.add(chunk)
            yield chunk
    whole = assembler.whole()
    if whole is not None:
        for keep in keepers:
            await keep(whole)


def internal_error(draft: OutcomeDraft) -> APIError:
    return APIError(500, f"internal error in the gateway (logged with request id {draft.request_id})",
                    code="internal_error")


async def unless_disconnected(request: Request | None, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` (a call, up to a stream's first chunk) in this task, cancelling it (and so the
    upstream request) if the client leaves meanwhile (none can without a request: a background run).
    One watcher task and no second task for the work: about half the cost of racing two tasks with
    asyncio.wait."""
    if request is None:
        return await work
    handler = asyncio.current_task()
    assert handler is not None
    running = True

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def left(watcher: asyncio.Task[None]) -> None:
        if running and not watcher.cancelled():  # not once the work is over: the cancel would land elsewhere
            handler.cancel()

    watcher = asyncio.ensure_future(disconnected())
    watcher.add_done_callback(left)
    try:
        return await work
    finally:
        running = False
        watcher.cancel()


def stream_response(state: GatewayState, draft: OutcomeDraft, chunks: AsyncIterator[dict], session: SessionCall,
                    dialect: DialectStream | None, end: Callable[[], Awaitable[None]] | None) -> SSEResponse:
    """The SSE response of `events`. Its `on_close` runs whether or not the body ever ran: a client that
    leaves before the first event is sent (the server may cancel the body before it starts) still has
    its upstream call closed, its session settled and its row written, as one that leaves mid-stream;
    then the dialect's `end` (what its turn held is given back)."""

    async def closed() -> None:
        if not draft.finished:  # the body never ran, so its `finally` did not either
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            draft.fail(499, "the client disconnected before the stream's first event", kind="aborted")
            await state.sessions.finish(session, draft)
            state.recorder.finish(draft)
            await draft.settled()
        if end is not None:
            await end()

    response = SSEResponse(events(state, draft, chunks, session, dialect), on_close=closed)
    response.headers.update(response_headers(draft))
    return response


async def events(state: GatewayState, draft: OutcomeDraft, chunks: AsyncIterator[dict],
                  session: SessionCall, dialect: DialectStream | None = None) -> AsyncGenerator[bytes, None]:
    """The chat chunks as the client's stream: as they came, or as a dialect's events (`dialect`)."""
    include_usage = draft.request is not None and draft.request.include_usage
    failed = ended = False
    last: dict = {}
    final: dict | None = None  # a Responses stream's whole Response, sent last
    failure: bytes | None = None  # the error event, sent once the turn is settled
    try:
        with state.drain.track():
            async with aclosing(chunks):
                for event in dialect.start() if dialect is not None else ():
                    yield event
                async for chunk in chunks:
                    draft.take_chunk(chunk)
                    last = chunk
                    if dialect is not None:
                        for event in dialect.chunk(chunk):
                            yield event
                        continue
                    if not chunk.get("choices") and "usage" in chunk and (not include_usage or chunk["usage"] is None):
                        continue  # usage the client did not ask for (we asked every backend), or none to bill
                    if not include_usage:
                        chunk.pop("usage", None)
                    yield sse_event(chunk)
            ended = True  # the upstream's [DONE] (with or without a finish_reason)
            if dialect is not None:
                for event in dialect.completed():
                    yield event
                usage = draft.estimated_usage() if draft.usage_estimated else draft.usage
                final = dialect.final(usage)
            elif include_usage and draft.usage_estimated:  # none the deployment could bill from: what is charged
                envelope = {k: last[k] for k in ("id", "object", "created", "model") if k in last}
                yield sse_event(envelope | {"choices": [], "usage": draft.estimated_usage()})
    except (BackendError, APIError) as exc:
        failed = True
        error = as_api_error(exc)
        draft.fail(error.status, f"stream broke after it started: {error.message}")
        failure = dialect.failed(error) if dialect is not None else sse_event(
            error_body(error.status, error.message, error.param, error.code))
    except Exception:
        failed = True
        log.exception("stream of request %s failed inside the gateway", draft.request_id)
        error = internal_error(draft)
        draft.fail(error.status, error.message)
        failure = dialect.failed(error) if dialect is not None else sse_event(error.body())
    except asyncio.CancelledError as cancel:
        failed = True
        cut = state.drain.absorb()
        if cut is None:  # the client left, or a background run was cancelled
            draft.fail(499, CANCELLED if cancel.args == (CANCELLED,) else "the client disconnected mid-stream",
                       kind="aborted")
            raise
        draft.fail(cut.status, cut.message, kind="aborted")
        failure = dialect.failed(cut) if dialect is not None else sse_event(cut.body())
    finally:
        if not failed and not ended:  # closed at a yield: the client left, or a cut
            why = CUT_MESSAGE if state.drain.cut else "the client disconnected mid-stream"
            draft.fail(499, why, kind="aborted")
        if not failed:  # before [DONE]: the program's next turn must find the pin settled
            await state.sessions.finish(session, draft)
        state.recorder.finish(draft)
        await draft.settled()
        if (failed or not ended) and dialect is not None and dialect.end is not None:
            await dialect.end()
    if failure is not None:
        yield failure
    if failed:
        return
    if dialect is None:
        yield DONE
    elif final is not None:  # stored before the client can name it in its next turn
        if dialect.follow_up is not None:  # after the answer's own call is settled: its session's pin is set
            try:
                async for event in dialect.follow_up():
                    yield event
            except (BackendError, APIError) as exc:
                yield dialect.failed(as_api_error(exc))
                if dialect.end is not None:
                    await dialect.end()
                return
            except Exception:
                log.exception("the tool loop of request %s failed inside the gateway", draft.request_id)
                yield dialect.failed(internal_error(draft))
                if dialect.end is not None:
                    await dialect.end()
                return
            final = dialect.final(usage)
        if dialect.keep is not None:
            await dialect.keep(final)
        if dialect.end is not None:
            await dialect.end()
        yield dialect.final_event(final)
