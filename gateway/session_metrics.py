"""Prometheus metrics of agent sessions, in the gateway's registry: turns, pin events as the gateway
sees them (set, released, hit, expired, evicted: judged when the program comes back), moves, chosen
TTLs and tool waits, and each in-process engine's pinned KV, pin counters, host and disk KV tiers (read at
scrape)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.metrics import PREFIX

_TTL_BUCKETS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class SessionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.turns = Counter(f"{PREFIX}_session_turns", "Agent session turns finished", ["kind"], registry=r)
        self.pins = Counter(f"{PREFIX}_session_pins", "Session pin events (set, released, hit, expired, "
                            "evicted)", ["event"], registry=r)
        self.prefix_affinity = Counter(f"{PREFIX}_prefix_affinity", "Requests naming no session, by where their "
                                       "prefix sent them (prefix: the instance that served it; new: none had "
                                       "enough of it; home_overloaded, home_down: it was moved)", ["reason"],
                                       registry=r)
        self.moves = Counter(f"{PREFIX}_session_moves", "Turns served away from the instance holding the "
                             "session's KV", ["reason"], registry=r)
        self.ttl = Histogram(f"{PREFIX}_session_pin_ttl_seconds", "Pin TTL chosen at turn end", buckets=_TTL_BUCKETS,
                             registry=r)
        self.tool_wait = Histogram(f"{PREFIX}_session_tool_wait_seconds", "Gap between a turn's end and the "
                                   "program's next turn", buckets=_TTL_BUCKETS, registry=r)
        self.pinned_blocks = Gauge(f"{PREFIX}_kv_pinned_blocks", "KV blocks held by session pins",
                                   ["deployment"], registry=r)
        self.pinned_tokens = Gauge(f"{PREFIX}_kv_pinned_tokens", "KV memory held by session pins, in tokens",
                                   ["deployment"], registry=r)
        self.engine_pins = Gauge(f"{PREFIX}_engine_pin_events", "An engine instance's pin counters",
                                 ["deployment", "event"], registry=r)
        self.engine_kv_capacity = Gauge(f"{PREFIX}_engine_kv_capacity_tokens", "An engine instance's GPU KV cache, "
                                        "in tokens, and how it stores them", ["deployment", "kv_cache_dtype"],
                                        registry=r)
        self.engine_host_kv = Gauge(f"{PREFIX}_engine_host_kv", "An engine instance's host KV tier: blocks used and "
                                    "total, blocks copied each way, prompt tokens loaded back",
                                    ["deployment", "counter"], registry=r)
        self.engine_disk_kv = Gauge(f"{PREFIX}_engine_disk_kv", "An engine instance's disk KV tier: blocks used and "
                                    "total, blocks written and loaded, prompt tokens loaded back, blocks taken "
                                    "over from an earlier engine", ["deployment", "counter"], registry=r)
