"""The gateway's Prometheus metrics, per model and route group, in the app's own registry."""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from gateway.route_calibration import CalibrationState

PREFIX = "pitstop"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The ranker's cost a request depends on the CPU's int8 throughput (2 ms to 17 ms p99 on the VMs
# measured, README): around the 2 ms budget, finely.
_RANK_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = ["route_group", "model"]
        self.requests = Counter(f"{PREFIX}_requests", "Requests finished", [*labels, "status"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Requests answered with an error", ["status", "code"],
                              registry=r)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "End-to-end latency", labels,
                                 buckets=_BUCKETS, registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time to first token (streaming)", labels,
                              buckets=_BUCKETS, registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens", [*labels, "kind"], registry=r)
        self.cost = Counter(f"{PREFIX}_cost_usd", "Cost in USD", labels, registry=r)
        # Less pitstop_cost_usd: what routing saved (gateway/outcomes.baseline_cost).
        self.baseline_cost = Counter(f"{PREFIX}_baseline_cost_usd", "What the requests would have cost on their "
                                     "route group's costliest model, in USD", labels, registry=r)
        self.retries = Counter(f"{PREFIX}_retries", "Requests retried on another deployment", ["model"],
                               registry=r)
        self.outstanding = Gauge(f"{PREFIX}_outstanding_requests", "Requests in flight per deployment",
                                 ["deployment"], registry=r)
        self.deployment_latency = Gauge(f"{PREFIX}_deployment_latency_seconds", "What latency-aware balancing "
                                        "weighs a deployment by (gateway/latency_balance.py): its peak-EWMA of seconds "
                                        "to a stream's first chunk, of seconds a whole answer's output token, of "
                                        "seconds a call of another kind", ["deployment", "measure"], registry=r)
        self.config_reloads = Counter(f"{PREFIX}_config_reloads", "Reloads of the model list (gateway/config_reload.py) "
                                      "by outcome: reloaded, refused (nothing changed), failed", ["outcome"], registry=r)
        # Models whose engines the master key paused or put to sleep through the gateway (gateway/model_holds.py).
        self.model_held = Gauge(f"{PREFIX}_model_held", "1 while the gateway holds a model's requests, its engines "
                                "paused or asleep through POST /pause or /sleep", ["model", "reason"], registry=r)
        self.held_requests = Gauge(f"{PREFIX}_held_requests", "Requests the gateway holds for a paused or sleeping "
                                   "model", ["model"], registry=r)
        self.admission_waiting = Gauge(f"{PREFIX}_admission_waiting",
                                       "Requests waiting in a deployment's admission queue (max_concurrency)",
                                       ["deployment"], registry=r)
        # A deployment passed over (or, all of a model's being so, a request refused) at its litellm_params
        # rpm / tpm (gateway/deployment_limits.py), and what its window holds.
        self.deployment_rate_limited = Counter(f"{PREFIX}_deployment_rate_limited",
                                               "Picks that passed a deployment over at its rpm or tpm",
                                               ["deployment", "limit"], registry=r)
        self.deployment_window = Gauge(f"{PREFIX}_deployment_window_usage",
                                       "Requests and tokens in a rate-limited deployment's last 60 s (with "
                                       "redis_url, every replica's as of the last sync)",
                                       ["deployment", "limit"], registry=r)
        # With redis_url, the windows' syncs (gateway/deployment_limits_sync.py): a failed one leaves each
        # replica on its own window until one answers.
        self.deployment_limit_syncs = Counter(f"{PREFIX}_deployment_limit_syncs",
                                              "Syncs of the deployments' rate windows with Redis by outcome",
                                              ["outcome"], registry=r)
        self.deployment_limits_shared = Gauge(f"{PREFIX}_deployment_limits_shared",
                                              "1 while the deployments' rate windows are shared through Redis, "
                                              "0 while each replica counts alone", registry=r)
        self.outcome_rows = Gauge(f"{PREFIX}_outcome_rows", "Outcome writer rows by state", ["state"], registry=r)
        # Every table's writer (outcomes, feedback, stored responses, conversation items): rows waiting for
        # the database during an outage, and what it refused or lost.
        self.writer_rows = Gauge(f"{PREFIX}_writer_rows", "Rows of each table's batch writer by state",
                                 ["table", "state"], registry=r)
        self.background_runs = Gauge(f"{PREFIX}_background_responses",
                                     "Background responses this replica is running", registry=r)
        # Taken over from a replica that stopped (gateway/background.py): resumed here, deferred (refused
        # for now: let go for a later look), or failed (refused for good, or too many takeovers).
        self.background_takeovers = Counter(f"{PREFIX}_background_takeovers", "Background responses taken over",
                                            ["outcome"], registry=r)
        # A model that could not answer and the one that did instead (gateway/fallbacks.py).
        self.fallbacks = Counter(f"{PREFIX}_fallbacks", "Requests sent on to a fallback model",
                                 ["from_model", "to_model", "reason"], registry=r)
        self.truncated = Counter(f"{PREFIX}_truncated_requests",
                                 "Responses turns cut to fit the model's context (truncation: auto)", ["model"],
                                 registry=r)
        # The response cache (gateway/response_cache.py): hit, coalesced (an identical request in flight
        # answered it), semantic_hit (a similar one's answer: cache.semantic, whose own counts are
        # pitstop_semantic_cache_total), miss, stored, too_large (served, not kept), error (its Redis away).
        self.cache = Counter(f"{PREFIX}_response_cache", "Response cache lookups and writes by outcome", ["outcome"],
                             registry=r)
        self.cache_bytes = Gauge(f"{PREFIX}_response_cache_bytes", "Bytes the local response cache holds", registry=r)
        self.rank_cpu = Histogram(f"{PREFIX}_rank_cpu_seconds", "CPU time of the thread scoring a request's rank",
                                  buckets=_RANK_BUCKETS, registry=r)
        group = ["route_group"]
        self.cost_preference = Gauge(f"{PREFIX}_route_group_cost_preference",
                                     "A route group's cost preference: its config's, or as its last calibration set it", group,
                                     registry=r)
        self.calibration_target = Gauge(f"{PREFIX}_route_group_calibration_target",
                                        "A calibrated route group's target (USD a request, or a share)", group, registry=r)
        self.calibration_achieved = Gauge(f"{PREFIX}_route_group_calibration_achieved",
                                          "At the preference set: what the calibration traffic gets, what a held-out "
                                          "half of it gets, and what the requests routed since got",
                                          [*group, "traffic"], registry=r)
        # Route groups' verified picks (gateway/verify.py) by outcome: accepted, escalated, unchecked, escalation_failed.
        self.verify = Counter(f"{PREFIX}_verify", "Verified picks by outcome", [*group, "outcome"], registry=r)
        self.calibrations = Counter(f"{PREFIX}_route_group_calibrations", "Calibration runs by outcome",
                                    [*group, "status"], registry=r)
        # Realtime WebSocket sessions (gateway/realtime.py): opened, open now, and frames relayed by who sent them.
        self.realtime_sessions = Counter(f"{PREFIX}_realtime_sessions", "Realtime sessions opened", ["model"],
                                         registry=r)
        self.realtime_open = Gauge(f"{PREFIX}_realtime_sessions_open", "Realtime sessions open", ["model"], registry=r)
        self.realtime_events = Counter(f"{PREFIX}_realtime_events", "Realtime frames relayed, by who sent them "
                                       "(client or upstream)", ["model", "direction"], registry=r)

    def observe(self, route_group: str, model: str, status: str, latency_s: float, ttft_s: float | None,
                prompt_tokens: int, completion_tokens: int, cached_tokens: int, cost_usd: float,
                cache_creation_tokens: int = 0) -> None:
        self.requests.labels(route_group, model, status).inc()
        self.latency.labels(route_group, model).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(route_group, model).observe(ttft_s)
        tokens = self.tokens
        tokens.labels(route_group, model, "prompt").inc(prompt_tokens)
        tokens.labels(route_group, model, "completion").inc(completion_tokens)
        tokens.labels(route_group, model, "cached").inc(cached_tokens)  # read from the prompt cache
        tokens.labels(route_group, model, "cache_creation").inc(cache_creation_tokens)  # written to it
        self.cost.labels(route_group, model).inc(cost_usd)

    def observe_calibration(self, route_group: str, state: CalibrationState) -> None:
        self.calibrations.labels(route_group, state.status).inc()
        self.cost_preference.labels(route_group).set(state.cost_preference)
        self.calibration_target.labels(route_group).set(state.target)
        if state.status == "calibrated":
            self.calibration_achieved.labels(route_group, "calibration").set(state.achieved or 0.0)
            if state.held_out_achieved is not None:
                self.calibration_achieved.labels(route_group, "held_out").set(state.held_out_achieved)

    def forget_calibration(self, route_group: str, removed: bool) -> None:
        """A group no longer calibrated, or removed by a config reload: its gauges would otherwise show their
        last values for as long as the process runs."""
        series: list[tuple[Gauge, tuple[str, ...]]] = [(self.calibration_target, (route_group,))]
        series += [(self.calibration_achieved, (route_group, t)) for t in ("calibration", "held_out", "since")]
        if removed:
            series.append((self.cost_preference, (route_group,)))
        for gauge, labels in series:
            with suppress(KeyError):  # older prometheus_client raises for a series never set
                gauge.remove(*labels)

    def observe_deployment_limit_sync(self, answered: bool) -> None:
        self.deployment_limit_syncs.labels("ok" if answered else "failed").inc()
        self.deployment_limits_shared.set(1 if answered else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
