"""Fallback models (litellm's `fallbacks` and `context_window_fallbacks`): a request whose model cannot
answer goes to the next model of its chain, before anything has reached the client.

"Cannot answer" is what the dispatcher gives up on: every deployment of the model failed (connection
errors, 429, 5xx), or its queue is full, or every one is at its rpm / tpm (gateway/deployment_limits.py);
or the upstream refused the prompt as longer than its context (a 400 `context_length_exceeded`, or vLLM's
"maximum context length" message). A model whose deployments
are all cooling down after failing is not asked at all while a later model of the chain may answer (the
last one is asked whatever its state), so an outage costs one failed call a cooldown, not one a request. Other
client errors are the client's to fix and go back as they are. The chain is the config's list for the
request's model, then, for a route group's pick, the group's other models in the router's order of
preference; at most `max_models` are tried after the first. The served model is the row's and the
`x-pitstop-model` header's; `extra.fallback` (and the `x-pitstop-fallback-from` header) says which model
was asked first, why it fell through, and what each failed model answered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from gateway import tracing
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.deployment_limits import RATE_LIMITED_CODE, DeploymentsRateLimited
from gateway.dispatch import Dispatched
from gateway.fallback_config import FallbacksConfig
from gateway.outcomes import OutcomeDraft
from gateway.routing import Route
from gateway.state import GatewayState

Answered = tuple[dict, Dispatched]
Streamed = tuple[AsyncIterator[dict], Dispatched]
T = TypeVar("T", Answered, Streamed)
CONTEXT_WINDOW_CODE = "context_length_exceeded"


def fall_back_reason(exc: BackendError) -> str | None:
    """"context_window", "error", or None where the failure is not one another model could avoid."""
    if exc.status == 400:
        message = exc.message.lower()
        if exc.code == CONTEXT_WINDOW_CODE or "maximum context length" in message or "context window" in message:
            return "context_window"
        return None
    return "error" if exc.retryable or exc.code in ("no_deployment", RATE_LIMITED_CODE) else None


def chain(config: FallbacksConfig, route: Route, reason: str) -> list[str]:
    """The models that may answer instead of `route`'s, in order."""
    explicit = (config.on_context_window if reason == "context_window" else config.on_error).get(route.model_name, [])
    group: list[str] = []
    if config.route_groups and route.decision is not None:
        scores = route.decision.scores
        group = sorted((m for m in scores if m != route.model_name), key=lambda m: -scores[m])
    return [m for m in dict.fromkeys((*explicit, *group)) if m != route.model_name][: config.max_models]


async def complete(state: GatewayState, draft: OutcomeDraft, kind: Kind, ctx: CallContext,
                   prefer: str | None) -> Answered:
    return await _with_fallbacks(state, draft, state.dispatcher.complete, kind, ctx, prefer)


async def stream(state: GatewayState, draft: OutcomeDraft, kind: Kind, ctx: CallContext,
                 prefer: str | None) -> Streamed:
    """Falls back only until the first chunk: the dispatcher returns once it has one."""
    return await _with_fallbacks(state, draft, state.dispatcher.stream, kind, ctx, prefer)


async def _with_fallbacks(state: GatewayState, draft: OutcomeDraft, dispatch: Callable[..., Awaitable[T]],
                          kind: Kind, ctx: CallContext, prefer: str | None) -> T:
    assert draft.request is not None
    body = draft.request.body

    def call(model: str, prefer: str | None, fall_back: bool) -> Awaitable[T]:
        state.routes.adopt(model)  # a chain may name a model a wildcard serves: its deployment made on first use
        return dispatch(model, kind, body, ctx, prefer, draft.sending, fall_back)

    route = draft.route
    assert route is not None
    config = state.settings.fallbacks  # read once: a reload meanwhile leaves this request's chain as it began
    try:
        if state.pool.cooling(route.model_name) and chain(config, route, "error"):
            raise BackendError(503, f"every deployment of {route.model_name!r} is cooling down after failures",
                               retryable=True, code="cooling_down")
        return await call(route.model_name, prefer, bool(chain(config, route, "error")))
    except BackendError as exc:
        _note_failure(draft, route.model_name, exc)
        reason = fall_back_reason(exc)
        models = chain(config, route, reason) if reason is not None else []
        if not models:
            raise
        first = exc
    failed = [_failure(route.model_name, first)]
    trace = {"from": route.model_name, "reason": reason, "failed": failed}
    ctx = tracing.fallback(ctx, reason, route.model_name)  # `call` makes the chain's calls with it: their spans say why
    for i, model in enumerate(models):
        if state.pool.cooling(model) and i < len(models) - 1:
            failed.append({"model": model, "status": 503, "code": "cooling_down", "message": "skipped: cooling down"})
            continue
        draft.route = replace(route, model_name=model)  # the decision stays the router's
        draft.extra["fallback"] = trace
        state.metrics.fallbacks.labels(route.model_name, model, reason).inc()
        try:
            return await call(model, None, i < len(models) - 1)  # a session's kept deployment is the first model's
        except BackendError as exc:
            _note_failure(draft, model, exc)
            if fall_back_reason(exc) is None:
                raise
            failed.append(_failure(model, exc))
    draft.route = route
    raise first


def _note_failure(draft: OutcomeDraft, model: str, exc: BackendError) -> None:
    """What the row keeps of a model's failure: its deployments' rpm / tpm where they refused it
    (extra.deployment_limits), how its hedged race went where one was due (extra.hedge)."""
    if isinstance(exc, DeploymentsRateLimited):
        draft.extra.setdefault("deployment_limits", {})[model] = exc.report
    if exc.hedge is not None:
        draft.hedged(exc.hedge)


def _failure(model: str, exc: BackendError) -> dict:
    return {"model": model, "status": exc.status, "code": exc.code, "message": exc.message[:200]}
