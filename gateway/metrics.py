"""The gateway's Prometheus metrics, per model and route group, in the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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
        self.retries = Counter(f"{PREFIX}_retries", "Requests retried on another deployment", ["model"],
                               registry=r)
        self.outstanding = Gauge(f"{PREFIX}_outstanding_requests", "Requests in flight per deployment",
                                 ["deployment"], registry=r)
        self.outcome_rows = Gauge(f"{PREFIX}_outcome_rows", "Outcome writer rows by state", ["state"], registry=r)
        self.rank_cpu = Histogram(f"{PREFIX}_rank_cpu_seconds", "CPU time of the thread scoring a request's rank",
                                  buckets=_RANK_BUCKETS, registry=r)

    def observe(self, route_group: str, model: str, status: str, latency_s: float, ttft_s: float | None,
                prompt_tokens: int, completion_tokens: int, cached_tokens: int, cost_usd: float) -> None:
        self.requests.labels(route_group, model, status).inc()
        self.latency.labels(route_group, model).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(route_group, model).observe(ttft_s)
        tokens = self.tokens
        tokens.labels(route_group, model, "prompt").inc(prompt_tokens)
        tokens.labels(route_group, model, "completion").inc(completion_tokens)
        tokens.labels(route_group, model, "cached").inc(cached_tokens)
        self.cost.labels(route_group, model).inc(cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
