"""One outcome row per request: a draft filled in as the request goes, finished exactly once
(metrics, spend, and the row handed to the batched writer, never written on the request path)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.tracing import Traced
from gateway.auth import Caller
from gateway.deployments import Deployment
from gateway.limits.base import Admission, Hold, Limiter
from gateway.metrics import GatewayMetrics
from gateway.moderation_guardrail import ModerationNotes
from gateway.pricing import TokenUsage, token_cost, usage_of
from gateway.request_body import ProxyRequest
from gateway.routing import Route
from gateway.spend_settling import Periods, SpendSettler, spend_periods
from gateway.tracing import request_ended
from rankers.work import CHARS_PER_TOKEN
from storage.models import utc_now
from storage.outcome_writer import OutcomeWriter

if TYPE_CHECKING:
    from gateway.budget_alerts import BudgetAlerts
    from gateway.dispatch import Dispatched
    from gateway.ranking import RankScores
    from gateway.response_cache import CacheTicket

log = logging.getLogger("pitstop.outcomes")


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(value: Any) -> Any:
    """JSON allows NUL characters, and UTF-16 surrogates escaped alone; PostgreSQL text and JSONB refuse
    the first, no UTF-8 encoder takes the second (an upstream's answer may carry both), and either
    would lose the whole row. A surrogate pair split across stream chunks is joined back into its
    character; one alone becomes U+FFFD."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if not value.isascii() and _SURROGATE.search(value):  # isascii is O(1): most text skips the scan
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value


async def _all(tasks: list[asyncio.Task]) -> None:
    await asyncio.gather(*tasks)


def _settled(rank: asyncio.Future[RankScores | None] | None) -> RankScores | None:
    if rank is None or not rank.done() or rank.cancelled() or rank.exception() is not None:
        return None
    return rank.result()


@dataclass
class OutcomeDraft:
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.monotonic)
    created_at: Any = field(default_factory=utc_now)
    caller: Caller | None = None
    hold: Hold | None = None  # what the request holds of its key's budget until it is settled
    team_hold: Hold | None = None  # the same, of its key's team's budget (in the team's budget period)
    admission: Admission | None = None  # what its key's and team's limits said (the x-ratelimit-* headers)
    settling: asyncio.Task | None = None  # the limiter learning what it cost (OutcomeRecorder.finish)
    periods: Periods = (None, None)  # the budget periods its cost counts in, its key's and team's (at finish)
    request: ProxyRequest | None = None
    endpoint: str | None = None  # the API asked, where it is not the request's kind ("responses", served as a chat)
    batch_id: str | None = None  # the batch whose line it is
    route: Route | None = None
    deployment: Deployment | None = None
    attempts: int = 0
    # Where the request was sent and has not answered yet: a request cut while it waits there (the
    # client left, a shutdown) has had its prompt read, and is charged for it.
    sent_to: Deployment | None = None
    ttft_s: float | None = None
    usage: dict | None = None
    finish_reason: str | None = None
    tool_calls: list[str] = field(default_factory=list)
    completion_parts: list[str] = field(default_factory=list)
    status: str = "ok"
    http_status: int = 200
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Calls made for this request besides the one whose body was served (gateway/verify.py's verifiers,
    # a pick that was escalated): their cost goes into the row's cost_usd and the key's spend.
    extra_cost_usd: float = 0.0
    priced_usd: float | None = None  # the call's cost where its endpoint prices it (realtime: audio apart), not tokens'
    # Hedged calls cancelled when another answered first (gateway/hedging.py): their estimated cost, in
    # the row's cost_usd and the key's spend too.
    hedge_cost_usd: float = 0.0
    # Moderation guardrails' checks before its calls (gateway/moderation_guardrail.py): the row's
    # extra.moderation, their cost in its cost_usd and the key's spend (as verifiers' are).
    moderation: ModerationNotes = field(default_factory=ModerationNotes)
    baseline_cost_usd: float | None = None  # set when it finishes (baseline_cost)
    finished: bool = False
    # A rank scored beside the upstream call (gateway/ranking.py): the row waits for it, the request does not.
    rank_pending: asyncio.Future[RankScores | None] | None = None
    # Where the response cache applies (gateway/response_cache.py): the key its answer is kept under.
    cache: CacheTicket | None = None
    trace: Traced | None = None  # its server span, where requests are traced (gateway/tracing.py); ended in finish

    def sending(self, deployment: Deployment) -> None:
        self.sent_to = deployment

    def answered_by(self, dispatched: Dispatched) -> None:
        """The call that answered: its deployment, the attempts it took, how a hedge went (extra.hedge)."""
        self.deployment, self.attempts = dispatched.deployment, dispatched.attempts
        if dispatched.hedge is not None:
            self.hedged(dispatched.hedge)
        if dispatched.rescue is not None:  # its first call's deployment was taken out (gateway/health_rescue.py)
            self.extra["rescue"] = dispatched.rescue
        if dispatched.limited and self.route is not None:  # steered away from deployments at their rpm / tpm
            self.extra.setdefault("deployment_limits", {})[self.route.model_name] = {"skipped": dispatched.limited}

    def hedged(self, report: dict) -> None:
        """How a hedged race went (extra.hedge); its cancelled calls' estimated cost is the request's too."""
        self.extra["hedge"] = report
        self.hedge_cost_usd += report.get("cancelled_cost_usd", 0.0)

    @property
    def charged_to(self) -> Deployment | None:
        """The deployment whose prices the row's cost uses."""
        if self.deployment is None and self.status == "aborted":
            return self.sent_to
        return self.deployment

    def fail(self, status: int, message: str, kind: str = "error") -> None:
        self.status, self.http_status, self.error = kind, status, message

    def take_response(self, body: dict) -> None:
        self.usage = body.get("usage") or self.usage  # every choice's tokens (n > 1)
        for choice in first_choices(body):  # the row keeps the first choice's text (n > 1: one sample)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            message = choice.get("message") or {}
            text = message.get("content") if message else choice.get("text")
            if isinstance(text, str):
                self.completion_parts.append(text)
            self._take_tool_calls(message.get("tool_calls"))

    def take_chunk(self, chunk: dict) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in first_choices(chunk):
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            text = delta.get("content") if delta else choice.get("text")
            if isinstance(text, str) and text:
                if self.ttft_s is None:
                    self.ttft_s = time.monotonic() - self.started
                self.completion_parts.append(text)
            self._take_tool_calls(delta.get("tool_calls"))

    def _take_tool_calls(self, calls: Any) -> None:
        for call in calls or ():
            name = ((call or {}).get("function") or {}).get("name")
            if name:
                self.tool_calls.append(name)

    async def settled(self) -> None:
        """Once the limiter knows what the request cost (and holds no more of its key's budget): awaited
        before the answer's end goes out, so the client's next request finds the budget as it is."""
        if self.settling is not None:
            await asyncio.shield(self.settling)

    @property
    def usage_estimated(self) -> bool:
        """A deployment was working on the request but reported no usage: a call or stream cut before
        its end (a client that left, a break, a shutdown), or a provider that never sends one. Counting
        that as zero tokens would make what was generated free to the key's budget; a client could
        spend the provider's money by leaving before each answer."""
        return self.usage is None and self.charged_to is not None

    @property
    def tokens(self) -> tuple[int, int, int]:
        """(prompt, completion, cached): the usage reported, else an estimate (`usage_estimated`): the
        prompt from its characters, the answer one token a streamed chunk (as OpenAI-style servers
        send them) or from its characters, whichever is more."""
        if not self.usage_estimated:
            return usage_tokens(self.usage)
        charged = self.charged_to  # its images as that deployment counts them (gateway/image_tokens.py)
        prompt_chars = 0 if self.request is None else self.request.chars_on([charged.image_tokens] if charged else [])
        text = "".join(self.completion_parts)
        return (math.ceil(prompt_chars / CHARS_PER_TOKEN),
                max(len(self.completion_parts), math.ceil(len(text) / CHARS_PER_TOKEN)), 0)

    @property
    def token_usage(self) -> TokenUsage:
        """`tokens`, with the prompt-cache writes the usage reports, 1-hour ones apart (none where estimated)."""
        counted = TokenUsage() if self.usage_estimated else usage_of(self.usage)
        return TokenUsage(*self.tokens, counted.cache_creation, counted.cache_creation_1h)

    def estimated_usage(self) -> dict[str, int]:
        """`tokens` as an OpenAI `usage`: what a client is told it was charged."""
        prompt_tokens, completion_tokens, _ = self.tokens
        if self.request is not None and self.request.kind == "embedding":  # OpenAI's embeddings usage
            return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}


_PROMPT_FIELD = {"chat": "messages", "completion": "prompt", "embedding": "input"}
# Rows that keep no text whatever storage.store_text says: a moderation's input is what may be refused
# for being harmful.
TEXTLESS_ENDPOINTS = ("moderation",)


def first_choices(answer: dict) -> list[dict]:
    """The choices of index 0 (or none given) in an answer or chunk: with n > 1, a stream interleaves
    the choices' chunks, and mixing them would make one text of several answers."""
    return [c for c in answer.get("choices") or () if c.get("index") in (0, None)]


def usage_tokens(usage: dict | None) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of a response's `usage`."""
    counted = usage_of(usage)
    return counted.prompt, counted.completion, counted.cached


CACHE_HITS = ("hit", "coalesced", "semantic-hit")  # answers the response cache served (the row's cache_hit)


def baseline_cost(draft: OutcomeDraft, cost: float) -> float:
    """What the request would have cost had its route group sent it to the costliest candidate: the
    served call's cost scaled by the router's predicted costs of the two, so the real prompt and answer
    length carry over (verifying calls are left out: the costliest model is served unverified). A
    request the router did not choose for (a model named, a session's later turn), a cache hit or a
    failure cost what it cost. Where the group's prices are known (a route's `prices`), the served call's
    tokens, prompt-cache reads and writes as billed, at the costliest's prices (gateway/pricing.py); else
    the costliest's predicted cost, which is what it avoided."""
    decision = draft.route.decision if draft.route else None
    if decision is None or not decision.predicted_cost_usd or draft.status != "ok" \
            or draft.extra.get("cache") in CACHE_HITS:
        return cost
    predicted = decision.predicted_cost_usd
    costliest = max(predicted.values())
    prices = (draft.route.prices or {}).get(max(predicted, key=predicted.__getitem__)) if draft.route else None
    if prices is not None and draft.charged_to is not None:
        return token_cost(prices, draft.token_usage)
    served_cost = cost - draft.extra_cost_usd - draft.moderation.cost_usd - draft.hedge_cost_usd
    served_predicted = predicted.get(draft.route.model_name) if draft.route else None
    if served_predicted and served_cost > 0:
        return served_cost * costliest / served_predicted
    return costliest


class OutcomeRecorder:
    def __init__(self, writer: OutcomeWriter | None, metrics: GatewayMetrics, limiter: Limiter,
                 store_text: bool, alerts: BudgetAlerts | None = None) -> None:
        self.alerts = alerts  # budget thresholds crossed, told as webhook events (gateway/budget_alerts.py)
        self.writer = writer
        self.metrics = metrics
        self.limiter = limiter
        self.store_text = store_text
        self._background: set[asyncio.Task] = set()  # the limiter's settling
        self._rows_waiting: set[asyncio.Task] = set()
        self.settler = SpendSettler(limiter, alerts, self._track)  # the key's and its team's

    def finish(self, draft: OutcomeDraft) -> None:
        if draft.finished:
            return
        draft.finished = True
        if draft.cache is not None:  # identical requests waiting on this one serve themselves if it kept nothing
            draft.cache.settle()
        latency = time.monotonic() - draft.started
        prompt_tokens, completion_tokens, cached_tokens = draft.tokens
        if draft.usage_estimated:
            draft.extra["usage_estimated"] = True  # the row's tokens and cost are the gateway's estimate
        if created := draft.token_usage.cache_creation:  # billed above the input price (gateway/pricing.py)
            draft.extra["cache_creation_tokens"] = created
        deployment = draft.charged_to
        own = draft.priced_usd
        cost = (own if own is not None else token_cost(deployment.info, draft.token_usage) if deployment else 0.0) \
            + draft.extra_cost_usd \
            + draft.moderation.cost_usd + draft.hedge_cost_usd
        if draft.moderation.checks:
            draft.extra["moderation"] = draft.moderation.checks
        if draft.trace is not None:
            request_ended(draft, cost)
        route = draft.route
        group = route.route_group if route and route.route_group else ""
        model = route.model_name if route else ""
        self.metrics.observe(group, model, draft.status, latency, draft.ttft_s, prompt_tokens,
                             completion_tokens, cached_tokens, cost, draft.token_usage.cache_creation)
        draft.baseline_cost_usd = baseline_cost(draft, cost)
        self.metrics.baseline_cost.labels(group, model).inc(draft.baseline_cost_usd)
        if draft.attempts > 1:
            self.metrics.retries.labels(model).inc()
        if draft.status != "ok":
            self.metrics.errors.labels(str(draft.http_status), draft.extra.get("code") or "").inc()
        draft.periods = spend_periods(draft.caller, draft.hold, draft.team_hold)  # the row's, for its spend
        settling = self.settler.settle(draft.caller, cost, prompt_tokens + completion_tokens, draft.hold,
                                       draft.team_hold, draft.periods)
        if settling:
            draft.settling = settling[0] if len(settling) == 1 else self._track(_all(settling))
        if self.writer is None:
            return
        rank = draft.rank_pending
        if rank is not None and not rank.done():
            self._track(self._submit_when_ranked(draft, rank, latency, cost), self._rows_waiting)
            return
        self._submit(draft, latency, cost)

    def _submit(self, draft: OutcomeDraft, latency: float, cost: float) -> None:
        assert self.writer is not None
        if (scores := _settled(draft.rank_pending)) is not None:
            scores.record(draft.extra)
        try:
            self.writer.submit(storable(self._row(draft, latency, cost)))
        except Exception:  # the request already has its answer: never fail it for the log
            log.exception("outcome row for %s was not accepted", draft.request_id)

    async def _submit_when_ranked(self, draft: OutcomeDraft, rank: asyncio.Future[RankScores | None], latency: float,
                                  cost: float) -> None:
        with suppress(Exception):  # the scorer logs its own failures; the row goes without a rank
            await asyncio.shield(rank)  # shielded: a cancelled drain must not cancel the scorer's future
        self._submit(draft, latency, cost)

    def _track(self, work: Coroutine[Any, Any, None], tasks: set[asyncio.Task] | None = None) -> asyncio.Task:
        tasks = self._background if tasks is None else tasks
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    @property
    def rows_waiting(self) -> int:
        """Rows not yet handed to the writer: their rank is still being scored."""
        return len(self._rows_waiting)

    def _row(self, draft: OutcomeDraft, latency: float, cost: float) -> dict:
        request, route, decision = draft.request, draft.route, draft.route.decision if draft.route else None
        prompt_tokens, completion_tokens, cached_tokens = draft.tokens
        prompt = None
        if self.store_text and request is not None and draft.endpoint not in TEXTLESS_ENDPOINTS:
            prompt = request.messages if request.kind == "chat" else request.body.get(_PROMPT_FIELD[request.kind])
        return {
            "request_id": draft.request_id, "created_at": draft.created_at,
            "endpoint": draft.endpoint or (request.kind if request else None),
            "api_key_id": draft.caller.key_id if draft.caller else None,
            "team_id": draft.caller.team.team_id if draft.caller and draft.caller.team else None,
            "key_period_start": draft.periods[0], "team_period_start": draft.periods[1],
            "session_id": request.session_id if request else None, "turn": draft.extra.get("turn"),
            "route_group": route.route_group if route else None,
            "requested_model": request.model if request else None,
            "model": route.model_name if route else None,
            "deployment": charged.name if (charged := draft.charged_to) else None,
            "engine_instance": charged.name if charged else None,
            "moved_instance": bool(draft.extra.get("moved_instance")),
            "router_name": decision.router_name if decision else None,
            "router_version": decision.router_version if decision else None,
            "router_scores": decision.scores if decision else None,
            "cost_preference": decision.cost_preference if decision else None,
            "propensity": decision.propensity if decision else None,
            "explore_epsilon": decision.explore_epsilon if decision and decision.explore_pool else None,
            "explore_pool": list(decision.explore_pool) if decision and decision.explore_pool else None,
            "routed_model": decision.model if decision else None,
            "verify_outcome": (draft.extra.get("verify") or {}).get("outcome"),
            "cache_hit": draft.extra.get("cache") in CACHE_HITS,
            "rank_score": draft.extra.get("rank_score"),
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cached_tokens": cached_tokens,
            "ttft_s": draft.ttft_s, "latency_s": latency, "cost_usd": cost,
            "baseline_cost_usd": draft.baseline_cost_usd, "batch_id": draft.batch_id,
            "finish_reason": draft.finish_reason,
            "tool_calls": draft.tool_calls or None,
            "pin_ttl_s": request.pin_ttl_s if request else None,
            "stream": bool(request and request.stream), "status": draft.status, "http_status": draft.http_status,
            "error": draft.error, "prompt": prompt,
            "completion": "".join(draft.completion_parts) if self.store_text and draft.completion_parts else None,
            "extra": {k: v for k, v in draft.extra.items() if k not in ("turn", "rank_score", "moved_instance")}
            or None,
        }

    async def drain(self) -> None:
        if self._background or self._rows_waiting:
            await asyncio.gather(*self._background, *self._rows_waiting, return_exceptions=True)
