"""Spans of the gateway's API requests (`tracing:`, OpenTelemetry's GenAI conventions): a server span per
request, continuing the client's `traceparent`, with a child for the routing decision, one per upstream
attempt (whose `traceparent` goes to the upstream, so a Pitstop engine's or vLLM's own span sits under it),
and, for a stream, one for the wait for its first token. Spans carry names, numbers and ids, never a
prompt's or an answer's text. Off (no `tracing:`), none of this runs: the request path checks one None."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.server.errors import APIError
from engine.tracing import Traced, Tracing
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.tracing_config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from starlette.requests import Request

    from gateway.deployments import Deployment
    from gateway.outcomes import OutcomeDraft
    from gateway.request_body import ProxyRequest
    from gateway.routing import Route

log = logging.getLogger("pitstop.tracing")

# gen_ai.operation.name of each endpoint (the Responses and Messages APIs are served as chats).
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings", "responses": "chat",
              "messages": "chat", "gemini": "chat", "rerank": "rerank",  # rerank, moderation: no GenAI convention names them yet
              "moderation": "moderation", "classify": "classify", "score": "score"}
# litellm's provider prefixes as the conventions' gen_ai.provider.name values, where they differ.
PROVIDERS = {"pitstop-local": "pitstop", "pitstop-engine": "pitstop", "hosted_vllm": "vllm",
             "azure": "azure.ai.openai", "bedrock": "aws.bedrock", "vertex_ai": "gcp.vertex_ai",
             "gemini": "gcp.gemini"}
_SAMPLING = ("max_tokens", "max_completion_tokens", "temperature", "top_p")


def build_tracing(config: TracingConfig | None) -> Tracing | None:
    """The gateway's tracer provider, or None: no `tracing:` section, or OTEL_SDK_DISABLED=true."""
    if config is None or config.disabled_by_env:
        return None
    assert config.otlp_endpoint is not None and config.service_name is not None  # filled in by validation
    return Tracing(config.otlp_endpoint, config.service_name, config.sample_ratio, config.headers)


def provider_name(provider_model: str) -> str:
    provider = provider_model.split("/", 1)[0]
    return PROVIDERS.get(provider, provider)


def request_started(tracing: Tracing, request: Request, endpoint: str) -> Traced:
    """The request's server span, under the client's trace where it sent a `traceparent`."""
    path = request.url.path
    span = tracing.start(f"{request.method} {path}", tracing.continued(request.headers), "server", {
        "http.request.method": request.method, "http.route": path, "url.path": path,
        "gen_ai.operation.name": OPERATIONS.get(endpoint, endpoint)})
    return Traced(tracing, span)


def routed(trace: Traced | None, resolve: Callable[[ProxyRequest], Route], parsed: ProxyRequest) -> Route:
    """`resolve(parsed)`, under a `route` span saying what was decided: the route group, its router, the
    chosen model and what the router predicted for it."""
    if trace is None:
        return resolve(parsed)
    span = trace.tracing.start("route", trace.span, attributes={"gen_ai.request.model": parsed.model})
    try:
        route = resolve(parsed)
    except APIError as exc:  # an unknown model, say
        trace.tracing.fail(span, exc.code or str(exc.status), exc.message)
        raise
    else:
        span.set_attributes(_route_attributes(route))
    finally:
        span.end()
    return route


def _route_attributes(route: Route) -> dict[str, Any]:
    attributes: dict[str, Any] = {"pitstop.model": route.model_name}
    if route.route_group is not None:
        attributes["pitstop.route_group"] = route.route_group
    decision = route.decision
    if decision is not None:
        attributes |= {"pitstop.router.name": decision.router_name, "pitstop.router.version": decision.router_version,
                       "pitstop.router.cost_preference": decision.cost_preference}
        if (quality := decision.quality.get(route.model_name)) is not None:
            attributes["pitstop.router.predicted_quality"] = quality
        if (cost := decision.predicted_cost_usd.get(route.model_name)) is not None:
            attributes["pitstop.router.predicted_cost_usd"] = cost
        if decision.propensity < 1.0:  # exploration drew it
            attributes["pitstop.router.propensity"] = decision.propensity
    return attributes


@dataclass
class Attempt:
    """One upstream call's client span; `ctx` is what the backend gets: its trace is this span, so the
    call carries this span's `traceparent` (or, in process, the engine's span is made under it)."""

    span: Span
    ctx: CallContext
    tracing: Tracing


def attempt_started(ctx: CallContext, deployment: Deployment, kind: Kind, number: int,
                    last: BackendError | None) -> Attempt | None:
    """The span of attempt `number` (1-based) on `deployment`, or None when the request is not traced.
    Started before the deployment's admission queue, whose wait it includes."""
    trace = ctx.trace
    if trace is None:
        return None
    operation = OPERATIONS[kind]
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation, "gen_ai.request.model": deployment.model_name,
        "gen_ai.provider.name": provider_name(deployment.provider_model),
        "gen_ai.system": provider_name(deployment.provider_model),  # the older name, still read by some backends
        "pitstop.deployment": deployment.name, "pitstop.attempt": number}
    if last is not None:  # a retry on another deployment of the model
        attributes["pitstop.attempt.reason"] = f"retry after {last.code or last.status}"
    elif trace.reason is not None:  # another model of the fallback chain
        attributes["pitstop.attempt.reason"] = trace.reason
    span = trace.tracing.start(f"{operation} {deployment.model_name}", trace.span, "client", attributes)
    return Attempt(span, replace(ctx, trace=Traced(trace.tracing, span)), trace.tracing)


def attempt_ended(attempt: Attempt | None, error: BaseException | None = None) -> None:
    """The attempt's end: answered (its stream over), failed (status ERROR, `error.type`), or cut."""
    if attempt is None:
        return
    span = attempt.span
    if isinstance(error, BackendError):
        span.set_attribute("http.response.status_code", error.status)
        attempt.tracing.fail(span, error.code or str(error.status), error.message[:500])
    elif isinstance(error, asyncio.CancelledError | GeneratorExit):  # the client left, or a cut: not the upstream's
        span.set_attribute("pitstop.aborted", True)
    elif error is not None:
        attempt.tracing.fail(span, type(error).__name__, str(error)[:500])
    span.end()


def first_chunk(attempt: Attempt | None) -> None:
    """A stream's first chunk came: an event on its attempt's span."""
    if attempt is not None:
        attempt.span.add_event("gen_ai.first_chunk")


def fallback(ctx: CallContext, reason: str, from_model: str) -> CallContext:
    """The context calls to a fallback model are made under: their spans say why."""
    if ctx.trace is None:
        return ctx
    return replace(ctx, trace=replace(ctx.trace, reason=f"fallback ({reason}) from {from_model}"))


def hedge_context(ctx: CallContext, delay_s: float) -> CallContext:
    """The context a hedge (gateway/hedging.py) is made under: its span says it is one, and after how long."""
    if ctx.trace is None:
        return ctx
    return replace(ctx, trace=replace(ctx.trace, reason=f"hedge after {delay_s:.3f} s"))


def request_ended(draft: OutcomeDraft, cost_usd: float) -> None:
    """The request's server span ended with what its outcome row says: models, usage, cost, status; and
    for a stream, a child span for the wait for its first token. A span is never worth a request."""
    trace = draft.trace
    if trace is None:
        return
    try:
        span, end_ns = trace.span, time.time_ns()
        span.set_attributes(_outcome_attributes(draft, cost_usd))
        if draft.ttft_s is not None and draft.request is not None and draft.request.stream:
            start_ns = getattr(span, "start_time", None) or end_ns
            trace.tracing.start("time_to_first_token", span, start_time=start_ns).end(
                end_time=min(start_ns + int(draft.ttft_s * 1e9), end_ns))
        if draft.status == "aborted" and draft.http_status == 499:  # the client left: not the gateway's error
            span.set_attribute("pitstop.aborted", True)
        elif draft.status != "ok":
            trace.tracing.fail(span, draft.extra.get("code") or str(draft.http_status), (draft.error or "")[:500])
        span.end(end_time=end_ns)
    except Exception:
        log.exception("recording the span of request %s failed", draft.request_id)


def _outcome_attributes(draft: OutcomeDraft, cost_usd: float) -> dict[str, Any]:
    attributes: dict[str, Any] = {"pitstop.request_id": draft.request_id,
                                  "http.response.status_code": draft.http_status}
    parsed, route = draft.request, draft.route
    if parsed is not None:
        attributes["gen_ai.request.model"] = parsed.model
        attributes["pitstop.stream"] = parsed.stream
        for field in _SAMPLING:  # numbers the client set; never its text
            value = parsed.body.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes["gen_ai.request.max_tokens" if field.startswith("max_") else f"gen_ai.request.{field}"] = value
    if route is not None:
        attributes["gen_ai.response.model"] = route.model_name
        if route.route_group is not None:
            attributes["pitstop.route_group"] = route.route_group
    if draft.deployment is not None:
        attributes["pitstop.deployment"] = draft.deployment.name
        attributes["gen_ai.provider.name"] = provider_name(draft.deployment.provider_model)
        attributes["pitstop.attempts"] = draft.attempts
    if draft.usage is not None or draft.usage_estimated:
        prompt_tokens, completion_tokens, cached_tokens = draft.tokens
        attributes |= {"gen_ai.usage.input_tokens": prompt_tokens, "gen_ai.usage.output_tokens": completion_tokens,
                       "gen_ai.usage.cache_read.input_tokens": cached_tokens, "pitstop.cost_usd": cost_usd,
                       "gen_ai.usage.cache_creation.input_tokens": draft.token_usage.cache_creation}
        if draft.usage_estimated:
            attributes["pitstop.usage_estimated"] = True
    if draft.finish_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [draft.finish_reason]
    if draft.ttft_s is not None:
        attributes["gen_ai.latency.time_to_first_token"] = draft.ttft_s
    if (rank := draft.extra.get("rank_score")) is not None:  # the ranker's predicted answer length (work)
        attributes["pitstop.rank_score"] = rank
    if fell_back := draft.extra.get("fallback"):
        attributes["pitstop.fallback_from"] = fell_back["from"]
    if cache := draft.extra.get("cache"):
        attributes["pitstop.cache"] = cache
    return attributes
