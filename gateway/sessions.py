"""The gateway's side of agent sessions: small calls from serving.py around dispatch.

start(): which session and turn; keep a session on the model and the instance holding its KV (unless
down or far more loaded); returning turns carry their program's start as the scheduling hint; agent
turns ask the engine for a provisional pin, set at the turn's finish before its blocks are freed.
finish(): once the response is seen, the TTL policy's choice replaces the provisional TTL (or
releases the pin), the state is saved, and the outcome row says what happened."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from agent_sessions.affinity import AffinityRule, InstanceLoad
from agent_sessions.config import SessionsConfig
from agent_sessions.identity import scoped_session_id, session_id_of
from agent_sessions.manager import SessionManager, Turn
from agent_sessions.prefix_affinity import PrefixAffinity, request_text
from agent_sessions.store import MemorySessionStore, SessionStore
from agent_sessions.tool_artifact import load_estimator
from agent_sessions.ttl_policy import EngineCosts, TTLPolicy, memory_pressure
from gateway.backends.base import CallContext
from gateway.backends.local import LocalEngineBackend
from gateway.deployments import Deployment, DeploymentPool
from gateway.outcomes import OutcomeDraft
from gateway.request_body import ProxyRequest
from gateway.routing import Route, RouteTable, prompt_estimate
from gateway.session_metrics import SessionMetrics
from gateway.session_pins import KVViews, holds_pins, kv_view, session_info, set_ttl

log = logging.getLogger("pitstop.sessions")


@dataclass
class SessionCall:
    ctx: CallContext
    prefer: str | None = None
    turn: Turn | None = None
    explicit_ttl: bool = False  # the client set pin_ttl_s itself: it is kept as given
    # Prompt tokens the engine already holds for this turn: the last turn's pinned context, where the
    # pin is alive and the turn goes back to its instance. The ranker's work score skips their prefill.
    cached_tokens: int = 0
    # A request that names no session: its text's chunk hashes, remembered on the instance it is sent to
    # (agent_sessions/prefix_affinity.py).
    prefix_hashes: list[int] | None = None


def available(deployment: Deployment, now: float, tokens: int = 0) -> bool:
    """Up, not cooling down nor taken out by its health checks, and with headroom under its rpm / tpm for a
    request of `tokens`: a session's instance that is not is left as one that is down."""
    backend = deployment.backend
    alive = backend.engine.is_healthy if isinstance(backend, LocalEngineBackend) else True
    return alive and deployment.available(now) and deployment.at_limit(tokens) is None


def pinned_context(turn: Turn, prefer: str | None, now: float) -> int:
    """The tokens of a returning turn's prompt that its session's pin holds on the instance the turn
    is sent to; 0 for a first turn, a lapsed pin, or a turn moved elsewhere."""
    state = turn.state
    alive = state.pin_deadline is not None and state.pin_deadline > now
    home = prefer is not None and prefer == state.instance
    return state.pinned_tokens if turn.returning and alive and home else 0


CHARS_PER_TOKEN = 4  # what a KV cache's tokens hold of text, roughly, in English and code


class GatewaySessions:
    def __init__(self, config: SessionsConfig, manager: SessionManager, pool: DeploymentPool, routes: RouteTable,
                 metrics: SessionMetrics) -> None:
        self.config = config
        self.manager = manager
        self.pool = pool
        self.routes = routes
        self.metrics = metrics
        self.kv_views = KVViews()  # what the TTL choice reads of each deployment's KV
        self.prefixes = PrefixAffinity(AffinityRule(config.overload_slack, config.overload_ratio),
                                       min_match_chars=config.prefix_affinity_min_chars)

    @classmethod
    def build(cls, config: SessionsConfig, pool: DeploymentPool, routes: RouteTable, metrics: SessionMetrics,
              redis_url: str | None, artifact_path: str | Path | None) -> GatewaySessions:
        store: SessionStore
        if redis_url:
            from agent_sessions.redis_store import RedisSessionStore

            store = RedisSessionStore.from_url(redis_url, config.redis_prefix, config.idle_expiry_s)
        else:
            store = MemorySessionStore(config.idle_expiry_s)
        policy = TTLPolicy(load_estimator(artifact_path), max_ttl_s=config.max_ttl_s,
                           memory_cost_weight=config.memory_cost_weight)
        manager = SessionManager(store, policy, AffinityRule(config.overload_slack, config.overload_ratio),
                                 config.provisional_ttl_s)
        return cls(config, manager, pool, routes, metrics)

    async def close(self) -> None:
        await self.kv_views.close()
        await self.manager.store.close()

    # ---- around dispatch ----------------------------------------------------------------------

    async def start(self, parsed: ProxyRequest, draft: OutcomeDraft, ctx: CallContext) -> SessionCall:
        client_id = session_id_of(parsed.session_id, parsed.body)
        if not self.config.enabled or draft.route is None:
            return SessionCall(ctx)
        if client_id is None:
            return self._by_prefix(parsed, draft.route.model_name, ctx)
        session_id = scoped_session_id(client_id, draft.caller.key_id if draft.caller else None)
        turn = await self.manager.begin(session_id, parsed.body)
        draft.route = route = self._sticky(draft.route, turn)
        now = time.monotonic()
        deployments = self.pool.by_model.get(route.model_name, [])
        tokens = prompt_estimate(parsed, [d.image_tokens for d in deployments])
        affinity = self.manager.place(turn, [InstanceLoad(d.name, available(d, now, tokens), d.outstanding)
                                             for d in deployments])
        pin_ttl_s = parsed.pin_ttl_s
        if pin_ttl_s is None and (turn.returning or turn.shape.declares_tools):
            pin_ttl_s = self.config.provisional_ttl_s
        ctx = replace(ctx, session_id=session_id, pin_ttl_s=pin_ttl_s, estimated_tokens=tokens,  # the kept model's
                      hints=replace(ctx.hints, program_start=turn.program_start,
                                    in_program=turn.returning or turn.shape.declares_tools))
        if turn.tool_wait_s is not None:
            draft.extra |= {"tool_wait_s": round(turn.tool_wait_s, 4), "tools": turn.tools_answered,
                            "agent": turn.state.agent}
            self.metrics.tool_wait.observe(turn.tool_wait_s)
        return SessionCall(ctx, affinity.prefer, turn, explicit_ttl=parsed.pin_ttl_s is not None,
                           cached_tokens=pinned_context(turn, affinity.prefer, time.time()))

    def _by_prefix(self, parsed: ProxyRequest, model_name: str, ctx: CallContext) -> SessionCall:
        """No session: the instance that served the longest prefix of this request, if one did."""
        deployments = self.pool.by_model.get(model_name, [])
        if len(deployments) < 2 or not self.config.prefix_affinity_min_chars:
            return SessionCall(ctx)
        hashes = self.prefixes.chunk_hashes(request_text(parsed.body))
        now = time.monotonic()
        tokens = prompt_estimate(parsed, [d.image_tokens for d in deployments])
        affinity = self.prefixes.choose(hashes, [InstanceLoad(d.name, available(d, now, tokens), d.outstanding)
                                                 for d in deployments])
        self.metrics.prefix_affinity.labels(affinity.reason).inc()
        return SessionCall(ctx, affinity.prefer, prefix_hashes=hashes)

    def dispatched(self, call: SessionCall, deployment: Deployment) -> None:
        """The request was sent to `deployment`: remember its prefix there (requests that name no session)."""
        if call.prefix_hashes is None:
            return
        view = self.kv_views.known(deployment.backend)  # a server's capacity once it has said it
        capacity_tokens = view.capacity_tokens if view is not None else self.config.default_kv_capacity_tokens
        self.prefixes.routed(deployment.name, call.prefix_hashes, capacity_tokens * CHARS_PER_TOKEN)

    def _sticky(self, route: Route, turn: Turn) -> Route:
        """A route group's later turns stay on the model holding the session's KV while it is served."""
        model = turn.state.model
        group = self.routes.groups.get(route.route_group or "")
        if model is None or model == route.model_name or group is None or model not in group.group.models:
            return route
        now = time.monotonic()
        if not any(available(d, now) for d in self.pool.by_model.get(model, ())):
            return route
        return Route(route.route_group, model, None)

    async def finish(self, call: SessionCall, draft: OutcomeDraft) -> None:
        turn, deployment = call.turn, draft.deployment
        if turn is None or deployment is None or draft.status != "ok":
            return
        try:
            await self._finish(call, turn, deployment, draft)
        except Exception:  # the answer is already made: a session hiccup must not fail it
            log.exception("finishing turn of session %s failed", turn.session_id)

    async def _finish(self, call: SessionCall, turn: Turn, deployment: Deployment, draft: OutcomeDraft) -> None:
        prompt_tokens, completion_tokens, cached_tokens = draft.tokens
        backend = deployment.backend
        view = await self.kv_views.get(backend)
        costs = EngineCosts(self.config.prefill_tokens_per_s,
                            view.capacity_tokens if view else self.config.default_kv_capacity_tokens,
                            memory_pressure(view.used_fraction if view else 1.0, self.config.memory_pressure_floor),
                            attention_knee_tokens=self.config.attention_knee_tokens,
                            host_capacity_tokens=view.host_capacity_tokens if view else 0,
                            host_copy_tokens_per_s=self.config.host_copy_tokens_per_s,
                            disk_capacity_tokens=view.disk_capacity_tokens if view else 0,
                            disk_read_tokens_per_s=self.config.disk_read_tokens_per_s)
        outcome = await self.manager.end(turn, deployment.name, deployment.model_name, prompt_tokens,
                                         completion_tokens, cached_tokens, draft.tool_calls, costs)
        state = turn.state
        ttl = (call.ctx.pin_ttl_s or 0.0) if call.explicit_ttl else outcome.decision.ttl_s
        info = None
        if holds_pins(backend) and (call.ctx.pin_ttl_s or ttl):  # a provisional pin to settle, or one to set
            info = await (session_info(backend, turn.session_id) if call.explicit_ttl
                          else set_ttl(backend, turn.session_id, ttl))
        block = view.block_size if view else 16
        pinned_blocks = int(info["pinned_blocks"]) if info else 0
        state.pin_ttl_s = ttl if pinned_blocks else 0.0
        state.pin_deadline = time.time() + ttl if pinned_blocks else None
        # A hit on the next turn: at least the pinned part of this turn's prompt comes back cached. The engine
        # says how long a prefix its pin holds (with KV groups, a block of each group per `block` tokens).
        pinned = int(info.get("pinned_tokens", pinned_blocks * block)) if info else 0
        state.pinned_tokens = min(pinned, prompt_tokens // block * block)
        await self.manager.save(state)
        self._count(call, outcome.previous_pin, outcome.moved, turn, pinned_blocks)
        draft.extra |= {"turn": outcome.turn_number, "moved_instance": outcome.moved,
                        "session_pin_ttl_s": round(state.pin_ttl_s, 4), "pinned_blocks": pinned_blocks,
                        "p_return": round(outcome.decision.p_return, 4)}
        if outcome.previous_pin:
            draft.extra["previous_pin"] = outcome.previous_pin

    def _count(self, call: SessionCall, previous_pin: str | None, moved: bool, turn: Turn, pinned: int) -> None:
        m = self.metrics
        m.turns.labels("returning" if turn.returning else "first").inc()
        if previous_pin:
            m.pins.labels(previous_pin).inc()
        if moved:
            m.moves.labels(turn.affinity.reason if turn.affinity else "retry").inc()
        if pinned:
            m.pins.labels("set").inc()
            m.ttl.observe(turn.state.pin_ttl_s)
        elif call.ctx.pin_ttl_s:
            m.pins.labels("released").inc()

    # ---- visibility ---------------------------------------------------------------------------

    async def describe(self, client_id: str, key_id: str | None) -> dict | None:
        """The public view of the caller's session `client_id`; None when unknown (or another key's).
        Raises StateUnavailableError when the store is not answering (a turn is then served without
        state; a lookup cannot be)."""
        session_id = scoped_session_id(client_id, key_id)
        state = await self.manager.store.get(session_id)
        if state is None:
            return None
        body = state.public(time.time()) | {"id": client_id}
        home = next((d for d in self.pool.deployments if d.name == state.instance), None)
        engine = await session_info(home.backend, session_id) if home is not None else None
        body["engine"] = engine
        body["pinned_blocks"] = engine["pinned_blocks"] if engine else 0
        return body

    def collect(self) -> None:
        """At scrape time: pinned KV, pin counters and KV tiers of each in-process engine."""
        for deployment in self.pool.deployments:
            view = kv_view(deployment.backend)
            if view is None:
                continue
            self.metrics.pinned_blocks.labels(deployment.name).set(view.pinned_blocks)
            self.metrics.pinned_tokens.labels(deployment.name).set(view.pinned_tokens)
            engine = deployment.backend.engine.engine  # type: ignore[attr-defined]
            blocks = engine.block_manager
            kv_dtype = getattr(engine.runner, "kv_cache_dtype", "auto")
            self.metrics.engine_kv_capacity.labels(deployment.name, kv_dtype).set(blocks.num_blocks * blocks.block_size)
            for event in ("set", "refreshed", "expired", "evicted", "unpinned", "hit_tokens"):
                self.metrics.engine_pins.labels(deployment.name, event).set(getattr(blocks.pins.counters, event))
            if blocks.host is not None:
                host = blocks.host.stats()
                for name, value in (("used_blocks", host.used), ("total_blocks", host.total),
                                    ("saved_blocks", host.saved_blocks), ("loaded_blocks", host.loaded_blocks),
                                    ("hit_tokens", blocks.host_hit_tokens)):
                    self.metrics.engine_host_kv.labels(deployment.name, name).set(value)
            if blocks.disk is not None:
                disk = blocks.disk.stats()
                for name, value in (("used_blocks", disk.used), ("total_blocks", disk.total),
                                    ("saved_blocks", disk.saved_blocks), ("loaded_blocks", disk.loaded_blocks),
                                    ("hit_tokens", blocks.disk_hit_tokens), ("restored_blocks", disk.restored_blocks)):
                    self.metrics.engine_disk_kv.labels(deployment.name, name).set(value)
