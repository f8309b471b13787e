"""POST /v1/moderations (and /moderations, as LiteLLM's proxy answers it): OpenAI's moderation endpoint,
answered by a model marked `model_info.mode: moderation`, an OpenAI-compatible upstream's /moderations over
the direct transport or litellm's `amoderation` (gateway/backends/), retried and balanced over the model's
deployments as any call. Its answer is the upstream's as it came (`id`, `model`, `results` with `flagged`,
`categories`, `category_scores` and `category_applied_input_types` where it gives them), once checked.

The request is admitted, limited and billed as an embeddings request (its input tokens at the model's input
price: OpenAI reports none, so the gateway's estimate, `extra.usage_estimated`), and leaves one outcome row
saying `endpoint: moderation` with no text (whatever storage.store_text says: it may be what was flagged),
`extra.flagged` and the categories that fired (`extra.categories`). A batch's /v1/moderations lines are
served here too (`serve_moderation_body`). The moderation guardrail (gateway/moderation_guardrail.py)
calls a moderation model through the dispatcher, not through this endpoint."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway import tracing
from gateway.auth import Caller
from gateway.backends.answers import bad_answer
from gateway.backends.base import CallContext
from gateway.budget_holds import budget_hold, team_hold
from gateway.moderation_request import PATHS, parse_moderation_request
from gateway.outcomes import OutcomeDraft
from gateway.own_endpoints import answered
from gateway.routing import Route as Routed
from gateway.routing import prompt_estimate
from gateway.serving import response_headers, unless_disconnected
from gateway.state import GatewayState

ENDPOINT = "moderation"  # the outcome row's `endpoint`


async def moderations(request: Request) -> Response:
    state: GatewayState = request.app.state.pitstop
    draft = OutcomeDraft(endpoint=ENDPOINT)
    if state.tracing is not None:
        draft.trace = tracing.request_started(state.tracing, request, ENDPOINT)
    return await answered(request, state, draft, None, _serve)


async def serve_moderation_body(state: GatewayState, caller: Caller, raw: Any, batch_id: str | None,
                                extra: dict | None = None) -> Response:
    """A moderation that came in no HTTP request of its own (a batch's line, gateway/batches.py), served as
    one that did, from `caller`: its answer or its error, and its outcome row (with `extra`)."""
    draft = OutcomeDraft(endpoint=ENDPOINT, caller=caller, batch_id=batch_id)
    draft.extra |= extra or {}
    return await answered(None, state, draft, raw, _serve)


ROUTES = [Route(path, moderations, methods=["POST"]) for path in PATHS]


def check_moderation_model(state: GatewayState, model: str) -> None:
    """Nothing for a moderation model (`mode: moderation`, listed or a wildcard's name); a 404 for a name the
    gateway does not serve, a 400 for a route group or a model of another mode."""
    routes = state.routes
    if model in routes.moderation_models:
        return
    served = ", ".join(sorted(routes.moderation_models)) or "none is configured"
    if model in routes.groups:
        raise bad_request(f"{model!r} is a route group, which routes chats; send moderations to a model by name "
                          f"(models that moderate: {served})", "model", "model_not_supported")
    if not routes.adopt(model):  # neither listed nor a name a wildcard serves
        raise not_found(f"the model {model!r} does not exist; models that moderate: {served}", "model",
                        "model_not_found")
    if model not in routes.moderation_models:  # a wildcard's name is one once adopted
        raise bad_request(f"the model {model!r} is not marked model_info.mode: moderation, so it does not moderate "
                          f"(models that do: {served})", "model", "model_not_supported")


async def _serve(request: Request | None, state: GatewayState, draft: OutcomeDraft, raw: Any) -> Response:
    if request is not None:
        draft.caller = await state.auth.authenticate(request.headers)
        raw = await read_json(request, state.settings.server.max_body_bytes)
    assert draft.caller is not None
    asked = parse_moderation_request(raw)
    draft.caller.check_model(asked.model)
    check_moderation_model(state, asked.model)
    draft.request = asked.as_request()
    server = state.settings.server
    hold = budget_hold(draft.caller, draft.request, state.routes, state.pool, draft.request_id,
                       server.request_timeout_s, server.num_retries + 1)
    shared = team_hold(draft.caller, hold)  # the same worst case, held of the key's team's budget
    draft.admission = await state.admit(draft.caller, hold, shared)
    draft.hold, draft.team_hold = hold, shared  # taken: the row's cost settles them
    draft.route = tracing.routed(draft.trace, lambda parsed: Routed(None, parsed.model), draft.request)
    ctx = CallContext(draft.request_id, priority=draft.caller.effective_priority(asked.priority),
                      timeout_s=server.request_timeout_s, trace=draft.trace,
                      estimated_tokens=prompt_estimate(draft.request))
    work = state.dispatcher.complete(draft.route.model_name, "moderation", draft.request.body, ctx,
                                     sent=draft.sending)
    answer, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)  # its deployment, attempts, and how a hedge went
    results = answer["results"]
    if len(results) != asked.results:
        raise bad_answer(f"{len(results)} results for the {asked.results} the request's input holds")
    draft.usage = answer.get("usage")  # None where the model reports no tokens (OpenAI's): the row's estimate
    draft.extra["flagged"] = any(result["flagged"] for result in results)
    draft.extra["categories"] = sorted({name for result in results for name, on in result["categories"].items() if on})
    state.recorder.finish(draft)
    await draft.settled()
    body = {k: v for k, v in answer.items() if not (k == "usage" and v is None)}  # a usage it could not bill
    body.setdefault("id", f"modr-{draft.request_id.removeprefix('req-')}")
    body.setdefault("model", asked.model)
    return SafeJSONResponse(body, headers=response_headers(draft))
