"""Everything one gateway app holds, built from Settings: deployments and their backends, the route
table, auth and limits, the outcome writer and metrics. No process-global state."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from starlette.responses import Response

from engine.tracing import Tracing
from gateway.auth import Authenticator, Caller
from gateway.backends.base import Backend
from gateway.batches import Batches
from gateway.budget_alerts import BudgetAlerts
from gateway.config import Settings
from gateway.config_reload import ConfigReloader
from gateway.conversations import Conversations, turn_hold_s
from gateway.deployment_build import adapter_backend, add_deployment, adopt_wildcard, make_backend
from gateway.deployment_limits_sync import DeploymentLimitSync
from gateway.deployments import DeploymentPool
from gateway.dispatch import Dispatcher
from gateway.drain import Drain
from gateway.files import Files
from gateway.guardrails import Guardrails
from gateway.health_checks import HealthChecker
from gateway.health_rescue import Rescues
from gateway.hedging import HedgePolicy
from gateway.key_events import KeyEvents
from gateway.limit_gate import LimitGate
from gateway.limits.base import Admission, Hold, Limiter
from gateway.limits.factory import make_limiter
from gateway.metrics import GatewayMetrics
from gateway.outbound_policy import OutboundPolicy, OutboundRules
from gateway.outcome_retention import OutcomeRetention
from gateway.outcomes import OutcomeRecorder
from gateway.ranking import RequestRanker
from gateway.response_cache import ResponseCache, cache_upstreams
from gateway.route_calibration import RouteCalibrator
from gateway.router_artifacts import RouterArtifacts
from gateway.routing import RouteTable
from gateway.semantic_encoders import shared_passage_encoder
from gateway.session_metrics import SessionMetrics
from gateway.sessions import GatewaySessions
from gateway.stored_completions import StoredCompletions
from gateway.stored_responses import StoredResponses
from gateway.tracing import build_tracing
from gateway.vector_stores import VectorStores
from gateway.webhooks import WebhookSender
from storage.audit import AuditStore
from storage.batch_writer import BatchWriter
from storage.chat_completions import ChatCompletionStore, StoredCompletionWriter
from storage.conversations import ConversationItemWriter, ConversationStore
from storage.db import create_engine, ensure_sqlite_dir
from storage.files import BatchStore, FileStore
from storage.keys import KeyStore
from storage.migrate import upgrade
from storage.outcome_writer import FeedbackWriter, OutcomeWriter
from storage.responses import ResponseStore, StoredResponseWriter
from storage.teams import TeamStore
from storage.vector_stores import VectorStoreStore
from storage.videos import VideoStore
from storage.webhooks import EventOutbox, WebhookStore

log = logging.getLogger("pitstop.gateway")
WINDOW_LOOKUP_S = 5.0  # how long a deployment may take to say its context window at start
BACKGROUND_GRACE_S = 30.0  # how long background responses may go on at shutdown without server.graceful_shutdown_s


@dataclass
class GatewayState:
    settings: Settings
    pool: DeploymentPool
    dispatcher: Dispatcher
    routes: RouteTable
    auth: Authenticator
    limiter: Limiter
    metrics: GatewayMetrics
    recorder: OutcomeRecorder
    writer: OutcomeWriter
    feedback: FeedbackWriter
    keys: KeyStore
    responses: StoredResponses  # the Responses API's, for previous_response_id and retrieval
    conversations: Conversations  # the Conversations API's, for `conversation` and /v1/conversations
    files: Files  # /v1/files: batches' input and output, vector stores' files
    vector_stores: VectorStores  # /v1/vector_stores, searched by the Responses API's file_search tool
    batches: Batches  # /v1/batches (its `serve` is set by the app: gateway/app.py)
    webhooks: WebhookSender  # events to /v1/webhook_endpoints, from the stores' outbox
    stored_completions: StoredCompletions  # chats with `store: true`, read back at /v1/chat/completions
    seeded_keys: set[tuple[str, int | None]] = field(default_factory=set)  # (key or "team:<id>", budget period)
    sessions: GatewaySessions | None = None
    router_artifacts: RouterArtifacts | None = None
    ranking: RequestRanker | None = None  # output-length rank per request (gateway/ranking.py)
    calibrator: RouteCalibrator | None = None  # route groups' cost preferences from their traffic
    drain: Drain = field(default_factory=Drain)  # `pitstop serve` begins it on SIGTERM
    key_events: KeyEvents | None = None  # with Redis: key changes told to every replica at once
    cache: ResponseCache | None = None  # answers served again (gateway/response_cache.py), where configured
    retention: OutcomeRetention | None = None  # storage.*retention_days: old rows deleted
    windows: dict[str, int] = field(default_factory=dict)  # models' context windows as learnt (gateway/truncation.py)
    db: Engine | None = None  # the outcome log's database, for reports read from it (gateway/usage_endpoints.py)
    outbound: OutboundRules = field(default_factory=OutboundRules)  # where clients' URLs may lead (`outbound:`)
    tracing: Tracing | None = None  # `tracing:`: OpenTelemetry spans of each request (gateway/tracing.py)
    deployment_sync: DeploymentLimitSync | None = None  # with Redis: rpm / tpm windows shared by replicas
    reloader: ConfigReloader = field(default_factory=lambda: ConfigReloader(None))  # gateway/config_reload.py
    teams: TeamStore | None = None  # keys' teams (storage/teams.py), for /v1/teams
    audit: AuditStore | None = None  # the admin audit log (storage/audit.py), for /v1/organization/audit_logs
    health_checker: HealthChecker | None = None  # `health_checks:`: deployments probed between requests
    video_store: VideoStore | None = None  # /v1/videos' jobs (gateway/videos.py)
    gate: LimitGate = field(init=False)  # admission by the key's limits and its team's (gateway/limit_gate.py)
    _window_lookup: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.gate = LimitGate(self.limiter, self.seeded_keys)

    def writers(self) -> dict[str, BatchWriter]:
        """The batch writers by table: what reaches the database off the request path."""
        return {"outcomes": self.writer, "feedback": self.feedback, "responses": self.responses.writer,
                "conversation_items": self.conversations.writer, "chat_completions": self.stored_completions.writer}

    def models_changed(self, settings: Settings, changed: set[str]) -> None:
        """After a reload swapped in `settings`' model list: what is kept a model, from the new list;
        `changed`: the models whose deployments changed (their context windows are learnt again)."""
        if self.cache is not None:
            self.cache.upstreams = cache_upstreams(settings)
        if self.ranking is not None:
            self.ranking.ranker_model = ranker_models(settings)
        for model in changed:
            self.windows.pop(model, None)

    async def admit(self, caller: Caller, hold: Hold | None = None, team_hold: Hold | None = None) -> Admission | None:
        """Take a rate slot and, where there is a budget, the request's hold, of its key and of the key's team
        (settled by the outcome recorder when the request ends); what the limits said (None: there are
        none), or a LimitExceeded when they refuse (gateway/limit_gate.py)."""
        return await self.gate.admit(caller, hold, team_hold)

    async def start(self) -> None:
        for deployment in self.pool.deployments:
            await deployment.backend.start()
        self.router_artifacts = RouterArtifacts.for_routes(self.routes)
        if self.calibrator is not None:
            self.router_artifacts.on_swap = self.calibrator.router_changed
            await self.calibrator.start()
        await self.router_artifacts.start()
        await self.responses.start()  # and takes over any background response whose replica stopped
        self._window_lookup = asyncio.create_task(self._learn_windows())
        await self.batches.start()  # and takes over any batch whose replica stopped
        await self.webhooks.start()
        self.stored_completions.start()
        self.files.start()  # deletes expired files hourly
        self.vector_stores.start()  # takes over files whose ingestion's replica stopped
        if self.cache is not None:
            self.cache.start()  # a semantic cache's encoder loads beside serving
        if self.retention is not None:
            self.retention.start()
        if self.key_events is not None:
            await self.key_events.start()
        if self.deployment_sync is not None:
            self.deployment_sync.start()
        if self.health_checker is not None:
            self.health_checker.start()

    async def _learn_windows(self) -> None:
        """The models' context windows, for /v1/models (`max_model_len`, as vLLM lists it), looked up once at
        start beside serving; a deployment that does not say in time is left out until truncation asks."""
        from gateway.truncation import model_window

        async def learn(model: str) -> None:
            try:
                await asyncio.wait_for(model_window(self, model), WINDOW_LOOKUP_S)
            except Exception as exc:
                log.info("context window of %s not known: %s", model, exc or type(exc).__name__)

        await asyncio.gather(*(learn(model) for model in self.pool.by_model))

    async def close(self) -> None:
        if self._window_lookup is not None:
            self._window_lookup.cancel()
        if self.health_checker is not None:
            await self.health_checker.close()
        # Background responses first: they still need the deployments, limits and writers.
        grace_s = self.settings.server.graceful_shutdown_s
        grace_s = BACKGROUND_GRACE_S if grace_s is None else grace_s
        await asyncio.gather(self.responses.background.close(grace_s), self.batches.close(grace_s))
        await self.vector_stores.close()
        if self.router_artifacts is not None:
            await self.router_artifacts.close()
        if self.calibrator is not None:
            await self.calibrator.close()
        for deployment in self.pool.deployments:
            try:
                await deployment.backend.close()
            except Exception:
                log.exception("closing %s failed", deployment.name)
        await self.reloader.close()  # deployments a reload took out, still finishing their requests
        await self.recorder.drain()
        if self.recorder.alerts is not None:
            await self.recorder.alerts.close()  # its events written, before the sender stops
        await self.webhooks.close()
        if self.ranking is not None:
            self.ranking.close()
        if self.cache is not None:
            await self.cache.close()
        if self.retention is not None:
            await self.retention.close()
        if self.sessions is not None:
            await self.sessions.close()
        if self.deployment_sync is not None:
            await self.deployment_sync.close()
        await self.limiter.close()
        await self.responses.close()
        await self.stored_completions.close()
        await self.files.close()
        self.conversations.writer.close(timeout=10)
        if self.key_events is not None:
            await self.key_events.close()
        self.writer.close(timeout=10)
        self.feedback.close(timeout=10)
        if self.tracing is not None:  # the last spans, those of the requests that just finished, exported
            await asyncio.to_thread(self.tracing.shutdown)


async def _serve_unset(caller: Caller, kind: str, body: dict, batch_id: str) -> Response:
    raise RuntimeError("the app sets how batches serve their requests (gateway/app.py)")


def build_state(settings: Settings) -> GatewayState:
    url = settings.storage.url
    ensure_sqlite_dir(url)
    db = create_engine(url)
    upgrade(db)
    spool = settings.storage.spool_path
    writer = OutcomeWriter(db, max_buffer=settings.storage.max_buffer,
                           spool_path=settings.resolve_path(spool) if spool else None)
    feedback = FeedbackWriter(db, spool_path=settings.resolve_path(spool).with_suffix(".feedback.jsonl")
                              if spool else None)
    keys, teams = KeyStore(db), TeamStore(db)
    outbox = EventOutbox()  # the stores queue their events' deliveries; the sender sends them
    server = settings.server
    files = Files(FileStore(db))
    vector_stores = VectorStores(VectorStoreStore(db), files, settings.vector_stores.embedding_model,
                                 shared_passage_encoder())  # one MiniLM a process, the semantic cache's too
    conversations = Conversations(settings.responses, ConversationStore(db), ConversationItemWriter(
        db, spool_path=settings.resolve_path(spool).with_suffix(".conversations.jsonl") if spool else None),
        max_hold_s=turn_hold_s(server))
    outbound = OutboundRules(OutboundPolicy.of(settings.outbound))  # one policy for every client URL, reloaded
    responses = StoredResponses(settings.responses, ResponseStore(db, outbox), StoredResponseWriter(
        db, spool_path=settings.resolve_path(spool).with_suffix(".responses.jsonl") if spool else None),
        conversations, vector_stores, outbound)
    pool = DeploymentPool(allowed_fails=server.allowed_fails, cooldown_s=server.cooldown_s,
                          strategy=server.routing_strategy)
    backends: list[Backend] = []
    for entry in settings.model_list:
        base = entry.litellm_params._adapter_of
        backends.append(make_backend(entry, settings, outbound) if base is None
                        else adapter_backend(backends[base], entry))
        add_deployment(pool, entry, backends[-1], settings)
    limiter = make_limiter(settings.redis_url, fail_open=settings.limits.fail_open)
    metrics = GatewayMetrics()
    pool.on_limited = lambda deployment, limit: metrics.deployment_rate_limited.labels(deployment.name, limit).inc()
    deployment_sync = DeploymentLimitSync.from_url(
        settings.redis_url, settings.deployment_limits.redis_prefix, pool, settings.deployment_limits.sync_interval_s,
        on_sync=metrics.observe_deployment_limit_sync) if settings.redis_url else None
    if not settings.auth.require_keys:
        log.warning("API keys are not required (auth.require_keys is false): anyone who can reach this "
                    "address can use it")
    routes = RouteTable(settings)
    routes.wildcards.adopt = functools.partial(adopt_wildcard, pool, settings)
    tool_durations = settings.sessions.tool_durations
    sessions = GatewaySessions.build(settings.sessions, pool, routes, SessionMetrics(metrics.registry),
                                     settings.redis_url, settings.resolve_path(tool_durations) if tool_durations else None)
    ranking = RequestRanker.load(settings.ranking, ranker_models(settings), settings.base_dir)
    ranking.observe_cpu = metrics.rank_cpu.observe
    auth = Authenticator(settings.auth, settings.limits, keys, teams)
    webhooks = WebhookSender(WebhookStore(db), outbox, settings.webhooks, metrics.registry, outbound)
    return GatewayState(
        key_events=KeyEvents(settings.redis_url, auth.forget) if settings.redis_url else None,
        settings=settings, pool=pool, routes=routes,
        dispatcher=Dispatcher(pool, server.num_retries, Guardrails(settings.guardrails, metrics.registry),
                              HedgePolicy.build(settings.hedging, metrics.registry),
                              Rescues(metrics.registry) if settings.health_checks is not None
                              and settings.health_checks.rescue_in_flight else None),
        auth=auth, limiter=limiter, metrics=metrics,
        recorder=OutcomeRecorder(writer, metrics, limiter, settings.storage.store_text,
                                 BudgetAlerts(settings.alerts, webhooks)),
        writer=writer, feedback=feedback, keys=keys, teams=teams, responses=responses, conversations=conversations,
        audit=AuditStore(db), video_store=VideoStore(db),
        files=files, vector_stores=vector_stores, batches=Batches(BatchStore(db, outbox), files, _serve_unset,
                                     concurrency=settings.server.batch_concurrency),
        sessions=sessions, ranking=ranking, db=db, tracing=build_tracing(settings.tracing), deployment_sync=deployment_sync,
        webhooks=webhooks, outbound=outbound,
        stored_completions=StoredCompletions(settings.stored_completions, ChatCompletionStore(db), StoredCompletionWriter(
            db, spool_path=settings.resolve_path(spool).with_suffix(".chat_completions.jsonl") if spool else None)),
        cache=ResponseCache.build(settings, metrics) if settings.cache else None,
        retention=OutcomeRetention.configured(db, settings.storage),
        calibrator=RouteCalibrator(routes, db, metrics) if any(g.calibrate for g in settings.route_groups) else None,
        health_checker=HealthChecker(settings.health_checks, lambda: pool.deployments, metrics.registry)
        if settings.health_checks is not None else None,
        reloader=ConfigReloader(settings.source_path, drain_timeout_s=server.longest_call_s))


def ranker_models(settings: Settings) -> dict[str, str]:
    """Each listed model's name as the ranker knows it (model_info.router_model)."""
    return {m.model_name: m.model_info.router_model or m.model_name for m in settings.model_list}

