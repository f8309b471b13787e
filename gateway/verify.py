"""A route group's `verify:` on the request path: the router's pick answers; where its answer is a short
one (a choice letter or a number), other models are asked the same request, and when one of them does
not agree the group's strongest model answers instead (the rule: routers/verify.py).

Only whole (non-streaming) single-choice responses to the router's own choice are verified: a stream
has reached the client before its answer is known, and an agent session's kept model stays put. Every
call goes through the dispatcher (retries, cooldowns, admission). The served body is the pick's, or
the escalation's; a failed escalation still serves the pick's answer. The outcome row names the served
model, costs every call made, and says what happened in `extra.verify`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from engine.server.errors import APIError
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.dispatch import Dispatched
from gateway.outcomes import OutcomeDraft, usage_tokens
from gateway.state import GatewayState
from routers.verify import VerifyPolicy, short_answer

log = logging.getLogger("pitstop.verify")

VerifyOutcome = Literal["accepted", "escalated", "unchecked", "escalation_failed"]
Answered = tuple[dict, Dispatched]


async def complete(state: GatewayState, draft: OutcomeDraft, kind: Kind, ctx: CallContext,
                   prefer: str | None) -> Answered:
    """The response for a non-streaming request: the chosen model's, verified where its group says so."""
    route, request = draft.route, draft.request
    assert route is not None and request is not None
    policy = _policy(state, draft)
    pick = route.model_name
    if policy is None or route.decision is None or not policy.applies(pick, route.decision.quality.get(pick)):
        return await state.dispatcher.complete(pick, kind, request.body, ctx, prefer=prefer)
    return await _Verification(state, draft, kind, ctx, policy).run(prefer)


def _policy(state: GatewayState, draft: OutcomeDraft) -> VerifyPolicy | None:
    route, request = draft.route, draft.request
    if route is None or request is None or route.decision is None or route.route_group is None:
        return None  # a model asked by name, or a session kept on its model: nothing was chosen
    if request.stream or request.body.get("n") not in (None, 1):
        return None
    group = state.routes.groups.get(route.route_group)
    return group.verify if group is not None else None


def answer_text(body: dict, kind: Kind) -> str | None:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    if kind == "chat":
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = first.get("text")
    return text if isinstance(text, str) else None


def _failure(exc: BaseException) -> str:
    if isinstance(exc, BackendError | APIError):
        return exc.message
    log.warning("verify call failed unexpectedly: %r", exc)  # not an upstream's answer: worth a look
    return repr(exc)


@dataclass
class _Verification:
    state: GatewayState
    draft: OutcomeDraft
    kind: Kind
    ctx: CallContext
    policy: VerifyPolicy
    costs: dict[str, float] = field(default_factory=dict)  # model -> cost of its call, as calls finish
    trace: dict[str, Any] = field(default_factory=dict)

    async def run(self, prefer: str | None) -> Answered:
        route = self.draft.route
        assert route is not None
        pick = route.model_name
        picked = await self._call(pick, self.ctx, prefer)  # its failure is the request's, as unverified
        answer = short_answer(answer_text(picked[0], self.kind))
        # In the row from here: a client leaving midway still leaves the calls made (and charged).
        self.trace = {"outcome": None, "pick": pick, "pick_answer": answer, "verifiers": {}, "escalated_to": None,
                      "cost_usd": self.costs, "errors": {}}
        self.draft.extra["verify"] = self.trace
        verifiers = self.policy.verifiers_for(pick)
        if answer is None or not verifiers:
            return self._serve(pick, picked, "unchecked")
        # A verifier's KV is never reused by the session: no pin on its engine.
        checking = replace(self.ctx, pin_ttl_s=None)
        results = await asyncio.gather(*(self._call(v, checking) for v in verifiers), return_exceptions=True)
        answers: dict[str, str | None] = self.trace["verifiers"]
        for model, result in zip(verifiers, results, strict=True):
            if isinstance(result, BaseException):  # a verifier that fails does not agree
                self.trace["errors"][model] = _failure(result)
                answers[model] = None
            else:
                answers[model] = short_answer(answer_text(result[0], self.kind))
        if self.policy.accept(answer, list(answers.values())):
            return self._serve(pick, picked, "accepted")
        strong = self.trace["escalated_to"] = self.policy.escalate_to
        try:
            escalated = await self._call(strong, self.ctx)
        except Exception as exc:  # the request already has an answer: serve it rather than fail
            self.trace["errors"][strong] = _failure(exc)
            return self._serve(pick, picked, "escalation_failed")
        return self._serve(strong, escalated, "escalated")

    async def _call(self, model: str, ctx: CallContext, prefer: str | None = None) -> Answered:
        body, dispatched = await self.state.dispatcher.complete(model, self.kind, self._body, ctx, prefer=prefer)
        prompt_tokens, completion_tokens, _ = usage_tokens(body.get("usage"))
        self.costs[model] = dispatched.deployment.cost_usd(prompt_tokens, completion_tokens)
        self.draft.extra_cost_usd = sum(self.costs.values())  # until one is served: all of them
        return body, dispatched

    @property
    def _body(self) -> dict:
        assert self.draft.request is not None
        return self.draft.request.body

    def _serve(self, model: str, answered: Answered, outcome: VerifyOutcome) -> Answered:
        draft = self.draft
        assert draft.route is not None
        # The served call is costed by the recorder from the body's usage; the rest are extra.
        draft.extra_cost_usd = sum(cost for called, cost in self.costs.items() if called != model)
        draft.route = replace(draft.route, model_name=model)  # the decision stays the router's
        self.trace["outcome"] = outcome
        group = draft.route.route_group or ""
        self.state.metrics.verify.labels(group, outcome).inc()
        return answered
