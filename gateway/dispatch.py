"""Send a request to a deployment of a model: retry connection errors, 429 and 5xx on another
deployment as long as nothing has reached the client; count outstanding requests; hedge a slow first
byte on another deployment where `hedging:` says (gateway/hedging.py)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from engine.custom_tools import CustomCalls, as_function_chat
from engine.forced_tools import offering_only_allowed
from engine.sampling_params import InvalidRequestError
from engine.server.errors import APIError
from gateway.admission import waiting_item
from gateway.anthropic_fields import without_anthropic_fields
from gateway.backends.base import MEDIA_KINDS, Backend, BackendError, CallContext, Kind
from gateway.deployment_limits import Counted, DeploymentsRateLimited, Limit, answered_tokens
from gateway.deployments import Deployment, DeploymentPool
from gateway.guardrails import Guardrails, restore_answer, restored
from gateway.health_checks import probed
from gateway.health_rescue import Rescues
from gateway.hedging import HedgePolicy, Race, Won
from gateway.latency_balance import measure_of, speed
from gateway.model_holds import ModelHolds
from gateway.tracing import Attempt, attempt_ended, attempt_started, first_chunk, hedge_context

T = TypeVar("T")


async def _enter(deployment: Deployment, ctx: CallContext, arrival: float) -> Counted | None:
    """Count the request on the deployment (and in its rpm / tpm window, in the same step of the loop as
    the pick that chose it) and wait for its admission slot (gateway/admission.py)."""
    deployment.outstanding += 1  # waiting in the admission queue counts: balancing sees the queue
    counted = None if deployment.window is None else deployment.window.take(ctx.estimated_tokens)
    if deployment.admission is None:
        return counted
    try:
        await deployment.admission.acquire(waiting_item(ctx.priority, ctx.hints, arrival))
    except BaseException:
        deployment.outstanding -= 1
        raise
    return counted


def _settle_tokens(deployment: Deployment, counted: Counted | None, usage: object) -> None:
    """The window's estimate replaced by what the answer says it used, where it says."""
    if counted is not None and deployment.window is not None and (tokens := answered_tokens(usage)) is not None:
        deployment.window.settle(counted, tokens)


def _leave(deployment: Deployment) -> None:
    deployment.outstanding -= 1
    if deployment.admission is not None:
        deployment.admission.release()


Sent = Callable[[Deployment], None]


def as_sent(backend: Backend, kind: Kind, body: dict) -> tuple[dict, CustomCalls | None]:
    """The body as the backend takes it: Anthropic's fields only where it is Anthropic-bound
    (gateway/anthropic_fields.py); where it has no custom tools or allowed_tools, custom tools
    written as functions (with what turns their calls back) and only the allowed tools offered."""
    if kind == "chat" and not getattr(backend, "anthropic_fields", False):  # a test's stub backend: none
        body = without_anthropic_fields(body)
    if kind != "chat" or backend.native_tools:
        return body, None
    try:
        return as_function_chat(offering_only_allowed(body))
    except InvalidRequestError as exc:
        raise BackendError(400, str(exc), retryable=False, param=exc.param) from None
    except APIError as exc:  # a custom tool the gateway cannot write as a function
        raise BackendError(exc.status, exc.message, retryable=False, param=exc.param, code=exc.code) from None


@dataclass
class Dispatched:
    deployment: Deployment
    attempts: int
    hedge: dict | None = None  # how a hedge went, once one was due (gateway/hedging.py): the row's extra.hedge
    # Deployments passed over at their rpm / tpm (gateway/deployment_limits.py): the row's extra.deployment_limits
    limited: dict[str, Limit] | None = None
    rescue: dict | None = None  # a call's deployment taken out by its probes meanwhile (gateway/health_rescue.py)


@dataclass
class Opened:
    """A stream whose first chunk has come; its admission slot is held until the rest is read or closed."""

    first: dict
    chunks: AsyncIterator[dict]
    deployment: Deployment
    custom: CustomCalls | None
    traced: Attempt | None
    counted: Counted | None = None

    async def close(self) -> None:
        """A stream that lost a hedged race: its connection closed, its slot released."""
        try:
            await self.chunks.aclose()
        finally:
            _leave(self.deployment)
            attempt_ended(self.traced, asyncio.CancelledError())


Call = Callable[[CallContext, Deployment, int, BackendError | None], Awaitable[T]]


async def _nothing_to_close(answer: dict) -> None:
    pass


class Dispatcher:
    def __init__(self, pool: DeploymentPool, num_retries: int = 2, guardrails: Guardrails | None = None,
                 hedging: HedgePolicy | None = None, rescues: Rescues | None = None) -> None:
        self.pool = pool
        self.num_retries = num_retries
        self.guardrails = guardrails if guardrails else None  # checks each call's body (gateway/guardrails.py)
        self.hedging = hedging  # None: `hedging:` is off
        self.rescues = rescues  # None: `health_checks:` off, or its rescue_in_flight
        self.holds = ModelHolds()  # models paused or asleep through the gateway (gateway/rl_admin.py)

    def _next(self, model_name: str, tried: set[str], prefer: str | None, last: BackendError | None,
              ctx: CallContext, limited: dict[str, Limit] | None = None, measure: str | None = None) -> Deployment:
        try:
            deployment = self.pool.pick(model_name, tried, prefer, ctx.estimated_tokens, limited, measure)
        except DeploymentsRateLimited:
            if last is not None:  # the answer of a deployment that was asked tells more than the quota of the rest
                raise last from None
            raise
        if deployment is None:
            raise last or BackendError(503, f"no deployment of {model_name!r} is available", retryable=False,
                                       code="no_deployment")
        tried.add(deployment.name)
        return deployment

    async def complete(self, model_name: str, kind: Kind, body: dict, ctx: CallContext, prefer: str | None = None,
                       sent: Sent | None = None, fall_back: bool = False) -> tuple[dict, Dispatched]:
        """`fall_back`: the request has a fallback model left (gateway/fallbacks.py), where a call whose
        deployment its probes took out may go when the model has no other (gateway/health_rescue.py)."""
        guarded = await self.guardrails.guard(model_name, kind, body, ctx, self.complete) if self.guardrails else None
        answer, dispatched = await self._complete(model_name, kind, guarded.body if guarded else body, ctx, prefer, sent,
                                                  fall_back)
        if guarded is not None and guarded.masker is not None:
            answer = restore_answer(answer, guarded.masker)
        return answer, dispatched

    async def _complete(self, model_name: str, kind: Kind, body: dict, ctx: CallContext,
                        prefer: str | None, sent: Sent | None, fall_back: bool) -> tuple[dict, Dispatched]:
        await self._unless_held(model_name, ctx)
        tried: set[str] = set()
        if kind == "embedding":  # a model's deployments on Pitstop's engines have no embeddings endpoint
            tried = {d.name for d in self.pool.by_model.get(model_name, ()) if not d.backend.serves_embeddings}
        last: BackendError | None = None
        arrival = time.time()  # the admission queue's aging counts from here, across retries
        call = functools.partial(self._call, kind, body, arrival, sent)
        limited: dict[str, Limit] = {}
        measure = measure_of(kind, False)
        delay_s = self._hedge_delay(model_name, kind, False, prefer, ctx)
        if delay_s is not None or self._rescuing(model_name, kind):
            won = await self._race(model_name, False, delay_s, tried, ctx, call, _nothing_to_close, limited, measure,
                                   prefer, fall_back)
            return won.result, Dispatched(won.deployment, won.attempts, won.hedge, limited or None, won.rescue)
        for attempt in range(1, self.num_retries + 2):
            deployment = self._next(model_name, tried, prefer, last, ctx, limited, measure)
            started = time.monotonic()
            try:
                answer = await call(ctx, deployment, attempt, last)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                last = exc  # a queue that is full is no failure of the deployment; another may have room
                continue
            self._observe(model_name, kind, False, started)
            return answer, Dispatched(deployment, attempt, limited=limited or None)
        assert last is not None
        raise last

    async def _call(self, kind: Kind, body: dict, arrival: float, sent: Sent | None, ctx: CallContext,
                    deployment: Deployment, attempt: int, last: BackendError | None) -> dict:
        """One call for a whole answer, its admission slot held while it runs; a retryable failure is
        marked on the deployment (a full queue raises before: not the deployment's failure)."""
        traced = attempt_started(ctx, deployment, kind, attempt, last)  # None unless the request is traced
        call_ctx = ctx if traced is None else traced.ctx
        try:
            counted = await _enter(deployment, call_ctx, arrival)
        except BaseException as exc:
            attempt_ended(traced, exc)
            raise
        if sent is not None:
            sent(deployment)
        try:
            sent_body, custom = as_sent(deployment.backend, kind, body)
            started = time.monotonic()
            result = await deployment.backend.complete(kind, sent_body, call_ctx)
            _settle_tokens(deployment, counted, result.get("usage"))
            measure = measure_of(kind, False)
            usage = result.get("usage") if isinstance(result.get("usage"), dict) else {}
            self.pool.observe(deployment, measure, speed(measure, time.monotonic() - started,
                                                         usage.get("completion_tokens")))
        except BaseException as exc:
            attempt_ended(traced, exc)
            if isinstance(exc, BackendError) and exc.retryable:
                self.pool.mark_failure(deployment)
            raise
        finally:
            _leave(deployment)
        attempt_ended(traced)
        self.pool.mark_success(deployment)
        return custom.answer(result) if custom else result

    async def stream(self, model_name: str, kind: Kind, body: dict, ctx: CallContext, prefer: str | None = None,
                     sent: Sent | None = None, fall_back: bool = False) -> tuple[AsyncIterator[dict], Dispatched]:
        """Returns once the first chunk has arrived (retries happen before that); the iterator
        yields it and the rest. Errors after the first chunk are the caller's to report.
        `sent` (both methods) hears of each deployment the request is sent to, as it is sent."""
        guarded = await self.guardrails.guard(model_name, kind, body, ctx, self.complete) if self.guardrails else None
        chunks, dispatched = await self._stream(model_name, kind, guarded.body if guarded else body, ctx, prefer, sent,
                                                fall_back)
        if guarded is not None and guarded.masker is not None:
            chunks = restored(chunks, guarded.masker)
        return chunks, dispatched

    async def _stream(self, model_name: str, kind: Kind, body: dict, ctx: CallContext, prefer: str | None,
                      sent: Sent | None, fall_back: bool) -> tuple[AsyncIterator[dict], Dispatched]:
        await self._unless_held(model_name, ctx)
        tried: set[str] = set()
        last: BackendError | None = None
        arrival = time.time()
        call = functools.partial(self._open, kind, body, arrival, sent)
        limited: dict[str, Limit] = {}
        measure = measure_of(kind, True)
        delay_s = self._hedge_delay(model_name, kind, True, prefer, ctx)
        if delay_s is not None or self._rescuing(model_name, kind):
            won = await self._race(model_name, True, delay_s, tried, ctx, call, Opened.close, limited, measure,
                                   prefer, fall_back)
            return self._rest(won.result), Dispatched(won.deployment, won.attempts, won.hedge, limited or None,
                                                      won.rescue)
        for attempt in range(1, self.num_retries + 2):
            deployment = self._next(model_name, tried, prefer, last, ctx, limited, measure)
            started = time.monotonic()
            try:
                opened = await call(ctx, deployment, attempt, last)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                last = exc
                continue
            self._observe(model_name, kind, True, started)
            return self._rest(opened), Dispatched(deployment, attempt, limited=limited or None)
        assert last is not None
        raise last

    async def _open(self, kind: Kind, body: dict, arrival: float, sent: Sent | None, ctx: CallContext,
                    deployment: Deployment, attempt: int, last: BackendError | None) -> Opened:
        """One stream up to its first chunk; its attempt span ends when the stream ends."""
        traced = attempt_started(ctx, deployment, kind, attempt, last)
        call_ctx = ctx if traced is None else traced.ctx
        try:
            counted = await _enter(deployment, call_ctx, arrival)
        except BaseException as exc:
            attempt_ended(traced, exc)
            raise
        if sent is not None:
            sent(deployment)
        try:
            sent_body, custom = as_sent(deployment.backend, kind, body)
        except BaseException as exc:
            _leave(deployment)
            attempt_ended(traced, exc)
            raise
        chunks = deployment.backend.stream(kind, sent_body, call_ctx)
        started = time.monotonic()
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            _leave(deployment)
            error = BackendError(502, "upstream stream was empty", retryable=False)
            attempt_ended(traced, error)
            raise error from None
        except BaseException as exc:
            _leave(deployment)
            attempt_ended(traced, exc)
            await chunks.aclose()
            if isinstance(exc, BackendError) and exc.retryable:
                self.pool.mark_failure(deployment)
            raise
        first_chunk(traced)
        self.pool.observe(deployment, "stream", time.monotonic() - started)
        self.pool.mark_success(deployment)
        return Opened(first, chunks, deployment, custom, traced, counted)

    async def _unless_held(self, model_name: str, ctx: CallContext) -> None:
        """Waits while the model's engines are paused or asleep through the gateway: no deployment is picked, no
        slot taken, no hedge started meanwhile (gateway/model_holds.py)."""
        if self.holds.reason(model_name) is not None:
            await self.holds.wait(model_name, ctx.timeout_s)

    @staticmethod
    async def _rest(opened: Opened) -> AsyncIterator[dict]:
        first, chunks, custom = opened.first, opened.chunks, opened.custom
        error: BaseException | None = None
        usage = first.get("usage")
        try:
            yield custom.chunk(first) if custom else first
            async with aclosing(chunks):
                async for chunk in chunks:
                    usage = chunk.get("usage") or usage  # the last chunk's, asked for upstream
                    yield custom.chunk(chunk) if custom else chunk
        except BaseException as exc:  # a break mid-stream, or the client left (GeneratorExit, a cancel)
            error = exc
            raise
        finally:
            _settle_tokens(opened.deployment, opened.counted, usage)
            _leave(opened.deployment)
            attempt_ended(opened.traced, error)

    # ---- hedging (gateway/hedging.py): the policy decides, the race makes the calls above ----------

    def _hedge_delay(self, model_name: str, kind: Kind, streaming: bool, prefer: str | None,
                     ctx: CallContext) -> float | None:
        if self.hedging is None or kind == "embedding" or kind in MEDIA_KINDS:  # an upload or an image: never twice
            return None
        ready = self.pool.ready(model_name, tokens=ctx.estimated_tokens)
        return self.hedging.delay_s(model_name, streaming, prefer, len(ready))

    def _rescuing(self, model_name: str, kind: Kind) -> bool:
        """Whether the request's calls race against their deployment's outage (gateway/health_rescue.py): the
        model has a probed deployment, and the request is no upload nor image (never sent twice)."""
        return (self.rescues is not None and kind != "embedding" and kind not in MEDIA_KINDS
                and any(probed(d) for d in self.pool.by_model.get(model_name, ())))

    def _observe(self, model_name: str, kind: Kind, streaming: bool, started: float) -> None:
        if self.hedging is not None and kind != "embedding" and kind not in MEDIA_KINDS:
            self.hedging.observe(model_name, streaming, time.monotonic() - started)

    async def _race(self, model_name: str, streaming: bool, delay_s: float | None, tried: set[str], ctx: CallContext,
                    call: Call[T], drop: Callable[[T], Awaitable[None]], limited: dict[str, Limit],
                    measure: str, prefer: str | None, fall_back: bool) -> Won[T]:
        """A hedged race (`delay_s`), or one whose calls watch their deployment's outage, or both."""

        async def start(deployment: Deployment, attempt: int, last: BackendError | None,
                        hedged_after_s: float | None) -> T:
            tried.add(deployment.name)
            return await call(ctx if hedged_after_s is None else hedge_context(ctx, hedged_after_s),
                              deployment, attempt, last)

        def hedge_deployment(asked: set[str]) -> Deployment | None:
            ready = self.pool.ready(model_name, tried | asked, ctx.estimated_tokens)
            return self.pool.least_loaded(ready, measure) if ready else None

        return await Race(self.hedging, model_name, streaming, delay_s, self.num_retries, start, drop,
                          lambda last: self._next(model_name, tried, prefer, last, ctx, limited, measure),
                          hedge_deployment, prompt_tokens=ctx.estimated_tokens, rescues=self.rescues,
                          fall_back=fall_back).run()
