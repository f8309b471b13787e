"""A route group's `verify:` on the request path: the router's pick answers; where its answer is a short
one (a choice letter or a number), other models are asked the same request, and when one of them does
not agree the group's strongest model answers instead (the rule: routers/verify.py).

Only single-choice responses to the router's own choice are verified; an agent session's kept model
stays put. A stream is held back while the pick's reply could still be a short answer (its start fits
the grammar, `could_be_short`, and it is at most the group's `hold_chars`): one that ends inside the
hold is verified like a whole response, and the client gets the pick's chunks or the escalation's
stream; one that leaves the grammar or runs past the hold streams on unchecked. Every call
goes through the dispatcher (retries, cooldowns, admission). The served answer is the pick's, or the
escalation's; a failed escalation still serves the pick's answer. A pick that cannot answer falls back
(gateway/fallbacks.py) and the model that answers instead is verified as the pick would have been,
unless it is the escalation model. The outcome row names the served model, costs every call made, and
says what happened in `extra.verify`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from engine.server.errors import APIError
from gateway import fallbacks
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.dispatch import Dispatched, Sent
from gateway.outcomes import OutcomeDraft, first_choices
from gateway.pricing import token_cost, usage_of
from gateway.state import GatewayState
from routers.verify import VerifyPolicy, could_be_short, short_answer

log = logging.getLogger("pitstop.verify")

VerifyOutcome = Literal["accepted", "escalated", "unchecked", "escalation_failed"]
Answered = tuple[dict, Dispatched]
Streamed = tuple[AsyncIterator[dict], Dispatched]
T = TypeVar("T", Answered, Streamed)


async def complete(state: GatewayState, draft: OutcomeDraft, kind: Kind, ctx: CallContext,
                   prefer: str | None) -> Answered:
    """The response for a non-streaming request: the chosen model's, verified where its group says so."""
    policy = _applying(state, draft)
    if policy is None:
        return await fallbacks.complete(state, draft, kind, ctx, prefer)
    return await _Verification(state, draft, kind, ctx, policy).run(prefer)


async def stream(state: GatewayState, draft: OutcomeDraft, kind: Kind, ctx: CallContext,
                 prefer: str | None) -> Streamed:
    """The chunks for a streaming request: the chosen model's, held back and verified where its group
    says so. Returns once the first chunk to send is known; the hold's failures are the request's."""
    policy = _applying(state, draft)
    streamed = await fallbacks.stream(state, draft, kind, ctx, prefer)  # a pick that cannot answer falls back
    return streamed if policy is None else await _Verification(state, draft, kind, ctx, policy).held(*streamed)


def checks(state: GatewayState, draft: OutcomeDraft) -> bool:
    """Will this request's pick be verified if its answer is a short one?"""
    return _applying(state, draft) is not None


def _applying(state: GatewayState, draft: OutcomeDraft) -> VerifyPolicy | None:
    """The group's policy where it applies to this request's pick (routers/verify.py), else None."""
    policy, route = _policy(state, draft), draft.route
    if policy is None or route is None or route.decision is None:
        return None
    return policy if policy.applies(route.model_name, route.decision.quality.get(route.model_name)) else None


def _policy(state: GatewayState, draft: OutcomeDraft) -> VerifyPolicy | None:
    route, request = draft.route, draft.request
    if route is None or request is None or route.decision is None or route.route_group is None:
        return None  # a model asked by name, or a session kept on its model: nothing was chosen
    group = state.routes.groups.get(route.route_group)
    if group is None or request.body.get("n") not in (None, 1):
        return None
    return None if request.stream and not group.verify_hold_chars else group.verify


def _chunk_text(chunk: dict) -> tuple[str, bool]:
    """A streamed chunk's text, and whether it carries a tool call (never a short answer)."""
    text, tools = "", False
    for choice in first_choices(chunk):
        delta = choice.get("delta") or {}
        part = delta.get("content") if delta else choice.get("text")
        text += part if isinstance(part, str) else ""
        tools = tools or bool(delta.get("tool_calls"))
    return text, tools


async def _replay(held: list[dict], rest: AsyncIterator[dict] | None) -> AsyncIterator[dict]:
    """The held chunks, then the rest of their stream (closed with this generator)."""
    try:
        for chunk in held:
            yield chunk
        if rest is not None:
            async for chunk in rest:
                yield chunk
    finally:
        if rest is not None:
            await rest.aclose()  # type: ignore[attr-defined]


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
        # The pick, or where it cannot answer its fallback (gateway/fallbacks.py); their failure is the request's.
        picked = await fallbacks.complete(self.state, self.draft, self.kind, self.ctx, prefer)
        assert self.draft.route is not None
        pick = self.draft.route.model_name
        self._cost(pick, picked[0].get("usage"), picked[1])
        return await self._decide(pick, answer_text(picked[0], self.kind), picked,
                                  lambda strong: self._call(strong, self.ctx))

    async def held(self, chunks: AsyncIterator[dict], dispatched: Dispatched) -> Streamed:
        """Read the pick's stream while it could still be a short answer, then decide as `run` does."""
        route = self.draft.route
        assert route is not None
        pick, hold = route.model_name, self.state.routes.groups[route.route_group or ""].verify_hold_chars
        held: list[dict] = []
        text, usage, ended = "", None, False
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    ended = True
                    break
                held.append(chunk)
                usage = chunk.get("usage") or usage
                part, tools = _chunk_text(chunk)
                text += part
                if tools or len(text.strip()) > hold or not could_be_short(text):
                    break
        except BaseException:  # nothing reached the client: the request fails as a whole
            await chunks.aclose()  # type: ignore[attr-defined]
            raise
        if not ended:  # not a short answer (too long, not one by its start, a tool call): it streams on
            self._begin(pick, None)
            return self._serve(pick, (_replay(held, chunks), dispatched), "unchecked")
        self._cost(pick, usage, dispatched)
        # The escalation's cost is the served call's: the recorder reads it from its stream's usage.
        return await self._decide(pick, text, (_replay(held, None), dispatched),
                                  lambda strong: self.state.dispatcher.stream(strong, self.kind, self._body, self.ctx))

    async def _decide(self, pick: str, text: str | None, picked: T, escalate: Callable[[str], Awaitable[T]]) -> T:
        """Serve `picked` if the pick's reply `text` is a short answer its verifiers agree with, else
        what `escalate` gets from the escalation model (`picked` still, if that fails)."""
        answer = self._begin(pick, text)
        # (A pick that fell back to the escalation model is served as it is.)
        if answer is None or pick == self.policy.escalate_to or not self.policy.verifiers_for(pick):
            return self._serve(pick, picked, "unchecked")
        if await self._verifiers_agree(pick, answer):
            return self._serve(pick, picked, "accepted")
        strong = self.trace["escalated_to"] = self.policy.escalate_to
        try:
            escalated = await escalate(strong)
        except Exception as exc:  # the request already has an answer: serve it rather than fail
            self.trace["errors"][strong] = _failure(exc)
            return self._serve(pick, picked, "escalation_failed")
        return self._serve(strong, escalated, "escalated")

    def _begin(self, pick: str, text: str | None) -> str | None:
        """The pick's short answer, and the trace the outcome row keeps from here: a client leaving
        midway still leaves the calls made (and charged)."""
        answer = short_answer(text)
        self.trace = {"outcome": None, "pick": pick, "pick_answer": answer, "verifiers": {}, "escalated_to": None,
                      "cost_usd": self.costs, "errors": {}}
        self.draft.extra["verify"] = self.trace
        return answer

    async def _verifiers_agree(self, pick: str, answer: str) -> bool:
        verifiers = self.policy.verifiers_for(pick)
        # A verifier's KV is never reused by the session: no pin on its engine.
        checking = replace(self.ctx, pin_ttl_s=None)
        results = await asyncio.gather(*(self._call(v, checking, whole=True) for v in verifiers),
                                       return_exceptions=True)
        answers: dict[str, str | None] = self.trace["verifiers"]
        for model, result in zip(verifiers, results, strict=True):
            if isinstance(result, BaseException):  # a verifier that fails does not agree
                self.trace["errors"][model] = _failure(result)
                answers[model] = None
            else:
                answers[model] = short_answer(answer_text(result[0], self.kind))
        return self.policy.accept(answer, list(answers.values()))

    async def _call(self, model: str, ctx: CallContext, prefer: str | None = None, whole: bool = False,
                    sent: Sent | None = None) -> Answered:
        """A whole response from `model`; `whole`: asked so even where the client streams (a verifier)."""
        body = {k: v for k, v in self._body.items() if k not in ("stream", "stream_options")} if whole else self._body
        answered, dispatched = await self.state.dispatcher.complete(model, self.kind, body, ctx, prefer, sent)
        self._cost(model, answered.get("usage"), dispatched)
        return answered, dispatched

    def _cost(self, model: str, usage: dict | None, dispatched: Dispatched) -> None:
        self.costs[model] = token_cost(dispatched.deployment.info, usage_of(usage))  # cache reads as billed
        if self.draft.sent_to is dispatched.deployment:
            self.draft.sent_to = None  # the pick's cost is known now: a cut from here must not estimate it again
        self.draft.extra_cost_usd = sum(self.costs.values())  # until one is served: all of them

    @property
    def _body(self) -> dict:
        assert self.draft.request is not None
        return self.draft.request.body

    def _serve(self, model: str, answered: T, outcome: VerifyOutcome) -> T:
        draft = self.draft
        assert draft.route is not None
        # The served call is costed by the recorder from the body's usage; the rest are extra.
        draft.extra_cost_usd = sum(cost for called, cost in self.costs.items() if called != model)
        draft.route = replace(draft.route, model_name=model)  # the decision stays the router's
        self.trace["outcome"] = outcome
        group = draft.route.route_group or ""
        self.state.metrics.verify.labels(group, outcome).inc()
        return answered
