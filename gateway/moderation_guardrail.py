"""The moderation guardrail (`kind: moderation` in `guardrails:`, LiteLLM's `openai_moderation`): before a
guarded model's call, the request's texts (those the other guardrails read: gateway/guardrails.py
`located_texts`: messages, a prompt, embeddings' inputs, a rerank's query and documents) go to a moderation
model of the config, one input each. The call goes through the dispatcher like any other, so it is retried
and balanced over that model's deployments, and the guardrails on *that* model apply to it (a PII mask, say).

A result fires for a category the guardrail watches (`categories`; None: all) that the model flags, or
whose score reaches the category's `thresholds` entry (which then decides in place of the model's flag).
Any result firing refuses the request with the blocklist's 400 `guardrail_blocked`, naming the guardrail,
the categories and the field that held the text (never the text); nothing is sent to the guarded model.
A moderation model that cannot answer (every deployment down, a 5xx, a malformed answer, no answer within
`timeout_s`) is a 503 `guardrail_unavailable` naming the guardrail, or, with `fail_open`, lets the call go.

It runs per call, as the other guardrails do: a stream waits for it before its first byte, a fallback to
another guarded model is checked again. What each check found (guardrail, model, deployment, flagged, the
categories that fired, its cost; or its failure) is kept in the request's `ModerationNotes`, which the
outcome row writes as `extra.moderation`, its cost added to the row's `cost_usd` and the key's spend."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from engine.server.errors import APIError
from gateway.backends.answers import bad_answer
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.guardrails_config import GuardrailConfig
from rankers.work import CHARS_PER_TOKEN

if TYPE_CHECKING:
    from gateway.dispatch import Dispatched

# The dispatcher's `complete` (model, kind, body, ctx): the moderation call, made as any call is.
Complete = Callable[[str, Kind, dict, CallContext], Awaitable[tuple[dict, "Dispatched"]]]
UNAVAILABLE_CODE = "guardrail_unavailable"


@dataclass
class ModerationNotes:
    """A request's moderation checks: what each found (the outcome row's `extra.moderation`) and what they
    cost together (added to the row's `cost_usd`)."""

    checks: list[dict] = field(default_factory=list)
    cost_usd: float = 0.0

    def add(self, check: dict, cost_usd: float = 0.0) -> None:
        self.checks.append(check)
        self.cost_usd += cost_usd


def fired(guard: GuardrailConfig, result: dict) -> list[str]:
    """The categories of one moderation result that make `guard` block, sorted."""
    flags: dict[str, Any] = result.get("categories") or {}
    scores: dict[str, Any] = result.get("category_scores") or {}
    found = {category for category, on in flags.items() if on is True and category not in guard.thresholds
             and (guard.categories is None or category in guard.categories)}
    found |= {category for category, threshold in guard.thresholds.items()
              if isinstance(score := scores.get(category), int | float) and score >= threshold}
    if guard.categories is None and result.get("flagged") is True and not any(v is True for v in flags.values()):
        found.add("flagged")  # flagged with no category named: a model of its own categories
    return sorted(found)


async def moderate(guards: list[GuardrailConfig], model: str, texts: list[tuple[str, str]], ctx: CallContext,
                   complete: Complete, actions: Counter) -> None:
    """Each moderation guardrail on `model` asked about `texts` ((the field a refusal names, text) pairs):
    returns if the call may go, raises the 400 (or 503) it may not."""
    if not texts:  # token ids, say: nothing a moderation model reads
        return
    for guard in guards:
        await _check(guard, model, texts, ctx, complete, actions)


async def _check(guard: GuardrailConfig, model: str, texts: list[tuple[str, str]], ctx: CallContext,
                 complete: Complete, actions: Counter) -> None:
    assert guard.model is not None
    notes = ctx.moderation if ctx.moderation is not None else ModerationNotes()
    inputs = [text for _, text in texts]
    chars = sum(map(len, inputs))
    call_ctx = CallContext(ctx.request_id, priority=ctx.priority, timeout_s=guard.timeout_s, trace=ctx.trace,
                           estimated_tokens=chars // 4 + 1)
    check: dict[str, Any] = {"guardrail": guard.name, "model": guard.model}
    try:
        async with asyncio.timeout(guard.timeout_s):  # its retries included: the guarded call waits on it
            answer, dispatched = await complete(guard.model, "moderation", {"model": guard.model, "input": inputs},
                                                call_ctx)
        results = answer["results"]
        if len(results) != len(inputs):
            raise bad_answer(f"{len(results)} moderation results for the {len(inputs)} inputs sent")
    except (BackendError, TimeoutError) as exc:
        failure = exc if isinstance(exc, BackendError) else BackendError(
            504, f"no answer within timeout_s ({guard.timeout_s:g} s)", retryable=False)
        notes.add({**check, "error": f"{failure.status}: {failure.message[:200]}", "fail_open": guard.fail_open})
        actions.labels(guard.name, "fail_open" if guard.fail_open else "unavailable", "moderation").inc()
        if guard.fail_open:
            return
        raise APIError(503, f"guardrail {guard.name!r} could not check this request for {model!r}: its moderation "
                            f"model {guard.model!r} failed ({failure.status}: {failure.message[:200]})", None,
                       UNAVAILABLE_CODE) from None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens") or math.ceil(chars / CHARS_PER_TOKEN)  # OpenAI reports none
    cost = dispatched.deployment.cost_usd(tokens, 0)
    firing = [(param, fired(guard, result)) for (param, _), result in zip(texts, results, strict=True)]
    categories = sorted({category for _, found in firing for category in found})
    notes.add({**check, "deployment": dispatched.deployment.name,
               "flagged": any(result.get("flagged") is True for result in results), "fired": categories,
               "cost_usd": cost}, cost)
    if not categories:
        return
    for category in categories:
        actions.labels(guard.name, "block", category).inc()
    param = next(param for param, found in firing if found)
    raise APIError(400, f"guardrail {guard.name!r} does not let this request through to {model!r}: its moderation "
                        f"model {guard.model!r} flagged {', '.join(categories)}", param, "guardrail_blocked")
