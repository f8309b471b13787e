"""vLLM's own scoring endpoints through the gateway: POST /classify (and /v1/classify) for models marked
`model_info.mode: classify`, POST /score (and /v1/score) for rerankers (`mode: rerank`: a cross-encoder or a
one-label classifier scores pairs), with vLLM's bodies and answers (gateway/vllm_request.py).

Each is asked of the model's deployments as any call is (gateway/dispatch.py: retried, balanced): a vLLM
server's or a Pitstop engine's own endpoint over the direct transport (/classify beside /v1, /v1/score), or a
classifier or cross-encoder in this process (gateway/backends/cross_encoder.py); litellm has no call for them,
so a litellm-only deployment is a 400 naming the direct transport. The answer is the deployment's as it came,
once checked (gateway/backends/answers.py checked_scores). The request is admitted, limited and billed as an
embeddings request (its input tokens, from the answer's usage.prompt_tokens, at the model's input price) and
leaves one outcome row saying `endpoint: classify` or `score`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway import tracing
from gateway.backends.answers import bad_answer
from gateway.backends.base import CallContext, Kind
from gateway.budget_holds import budget_hold, team_hold
from gateway.outcomes import OutcomeDraft
from gateway.own_endpoints import answered
from gateway.request_body import ProxyRequest
from gateway.routing import Route as Routed
from gateway.routing import RouteTable, prompt_estimate
from gateway.serving import response_headers, unless_disconnected
from gateway.state import GatewayState
from gateway.vllm_request import CLASSIFY_PATHS, SCORE_PATHS, classify_request, score_request

Parse = Callable[[Any], tuple[ProxyRequest, int]]


def _served_by(kind: Kind) -> tuple[str, Callable[[RouteTable], set[str]], Parse]:
    """The mode that serves `kind`, its models in the route table, and the body's parser."""
    if kind == "classify":
        return "classify", lambda routes: routes.classify_models, classify_request
    return "rerank", lambda routes: routes.rerank_models, score_request


def check_mode(state: GatewayState, model: str, kind: Kind) -> None:
    """Nothing for a model of the mode that serves `kind` (listed, or a wildcard's name once adopted); a 404 for a
    name the gateway does not serve, a 400 for a route group or a model of another mode."""
    mode, models, _ = _served_by(kind)
    routes = state.routes
    if model in models(routes):
        return
    served = ", ".join(sorted(models(routes))) or "none is configured"
    if model in routes.groups:
        raise bad_request(f"{model!r} is a route group, which routes chats; send /{kind} to a model by name "
                          f"(models that serve it: {served})", "model", "model_not_supported")
    if not routes.adopt(model):
        raise not_found(f"the model {model!r} does not exist; models that serve /{kind}: {served}", "model",
                        "model_not_found")
    if model not in models(routes):
        raise bad_request(f"the model {model!r} is not marked model_info.mode: {mode}, so it does not serve "
                          f"/{kind} (models that do: {served})", "model", "model_not_supported")


def _endpoint(kind: Kind) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        state: GatewayState = request.app.state.pitstop
        draft = OutcomeDraft(endpoint=kind)
        if state.tracing is not None:
            draft.trace = tracing.request_started(state.tracing, request, kind)

        async def serve(request: Request | None, state: GatewayState, draft: OutcomeDraft, raw: Any) -> Response:
            return await _serve(request, state, draft, kind)
        return await answered(request, state, draft, None, serve)
    return endpoint


ROUTES = [*(Route(path, _endpoint("classify"), methods=["POST"]) for path in CLASSIFY_PATHS),
          *(Route(path, _endpoint("score"), methods=["POST"]) for path in SCORE_PATHS)]


async def _serve(request: Request | None, state: GatewayState, draft: OutcomeDraft, kind: Kind) -> Response:
    assert request is not None
    draft.caller = await state.auth.authenticate(request.headers)
    raw = await read_json(request, state.settings.server.max_body_bytes)
    asked, results = _served_by(kind)[2](raw)
    draft.caller.check_model(asked.model)
    check_mode(state, asked.model, kind)
    draft.request = asked
    server = state.settings.server
    hold = budget_hold(draft.caller, asked, state.routes, state.pool, draft.request_id, server.request_timeout_s,
                       server.num_retries + 1)
    shared = team_hold(draft.caller, hold)  # the same worst case, held of the key's team's budget
    draft.admission = await state.admit(draft.caller, hold, shared)
    draft.hold, draft.team_hold = hold, shared  # taken: the row's cost settles them
    draft.route = tracing.routed(draft.trace, lambda parsed: Routed(None, parsed.model), asked)
    ctx = CallContext(draft.request_id, priority=draft.caller.effective_priority(asked.priority),
                      timeout_s=server.request_timeout_s, trace=draft.trace, estimated_tokens=prompt_estimate(asked))
    work = state.dispatcher.complete(draft.route.model_name, kind, asked.body, ctx, sent=draft.sending)
    answer, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)  # its deployment, attempts, and how a hedge went
    if len(answer["data"]) != results:
        raise bad_answer(f"{len(answer['data'])} results for the {results} the request holds")
    draft.usage = answer.get("usage")  # None where it reports no tokens: the row is charged an estimate
    state.recorder.finish(draft)
    await draft.settled()
    body = {k: v for k, v in answer.items() if not (k == "usage" and v is None)}
    body.setdefault("id", f"{kind}-{draft.request_id.removeprefix('req-')}")
    body.setdefault("model", asked.model)
    return SafeJSONResponse(body, headers=response_headers(draft))
