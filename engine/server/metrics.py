"""Prometheus metrics of one server, in its own CollectorRegistry (no process-global state, so two
apps in one process never collide). Request metrics are counted as requests pass; engine metrics
are read from a fresh EngineStats snapshot on every scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.llm_engine import EngineStats
from engine.outputs import RequestOutput
from engine.sleep import MEMORY_TAGS

PREFIX = "pitstop_engine"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class EngineStatsCollector(Collector):
    """Exposes the latest EngineStats snapshot; the /metrics handler refreshes it before rendering."""

    def __init__(self) -> None:
        self.stats: EngineStats | None = None
        self.healthy = True
        self.paused = False
        self.sleeping: tuple[str, ...] = ()  # engine/sleep.py's tags asleep now

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 while the engine step loop runs", value=int(self.healthy))
        yield GaugeMetricFamily(f"{PREFIX}_paused", "1 while generation is paused (POST /pause, a weight update)",
                                value=int(self.paused))
        sleeping = GaugeMetricFamily(f"{PREFIX}_sleeping", "1 while this memory sleeps (POST /sleep until its "
                                     "POST /wake_up)", labels=["memory"])
        for tag in MEMORY_TAGS:
            sleeping.add_metric([tag], int(tag in self.sleeping))
        yield sleeping
        s = self.stats
        if s is None:
            return
        config = GaugeMetricFamily(f"{PREFIX}_cache_config_info", "The KV cache's configuration (vLLM's "
                                   "cache_config_info)", labels=["block_size", "kv_cache_dtype"])
        config.add_metric([str(s.block_size), s.kv_cache_dtype], 1)
        yield config
        model = GaugeMetricFamily(f"{PREFIX}_model_config_info", "How the model's weights are served",
                                  labels=["quantization", "tensor_parallel_size"])
        model.add_metric([s.quantization or "none", str(s.tensor_parallel_size)], 1)
        yield model
        blocks = GaugeMetricFamily(f"{PREFIX}_kv_blocks", "KV cache blocks by state", labels=["state"])
        for state, value in (("total", s.blocks.total), ("used", s.blocks.used), ("pinned", s.blocks.pinned),
                             ("cached_free", s.blocks.cached_free), ("free", s.blocks.free)):
            blocks.add_metric([state], value)
        yield blocks
        requests = GaugeMetricFamily(f"{PREFIX}_requests_in_engine", "Requests inside the engine",
                                     labels=["state"])
        requests.add_metric(["running"], s.num_running)
        requests.add_metric(["waiting"], s.num_waiting)
        yield requests
        yield GaugeMetricFamily(f"{PREFIX}_active_pins", "Session pins currently held", value=s.blocks.pins)
        yield GaugeMetricFamily(f"{PREFIX}_lora_adapters", "LoRA adapters loaded", value=s.num_loras)
        yield CounterMetricFamily(f"{PREFIX}_steps", "Engine steps run", value=s.num_steps)
        yield CounterMetricFamily(f"{PREFIX}_preemptions", "Requests preempted", value=s.num_preemptions)
        computed = CounterMetricFamily(f"{PREFIX}_computed_tokens", "Tokens the engine computed", labels=["phase"])
        computed.add_metric(["prefill"], s.prefill_tokens)
        computed.add_metric(["decode"], s.generation_tokens)
        yield computed
        yield CounterMetricFamily(f"{PREFIX}_prefix_query_tokens", "Prompt tokens looked up in the prefix cache",
                                  value=s.blocks.prefix_query_tokens)
        yield CounterMetricFamily(f"{PREFIX}_prefix_hit_tokens", "Prompt tokens served from the prefix cache",
                                  value=s.blocks.prefix_hit_tokens)
        yield CounterMetricFamily(f"{PREFIX}_pin_hit_tokens", "Prefix-cache hit tokens from pinned blocks",
                                  value=s.pins.hit_tokens)
        if (host := s.blocks.host) is not None:
            yield CounterMetricFamily(f"{PREFIX}_host_hit_tokens", "Prompt tokens loaded back from the host KV tier",
                                      value=s.blocks.host_hit_tokens)
            host_blocks = GaugeMetricFamily(f"{PREFIX}_host_kv_blocks", "Host KV tier blocks by state",
                                            labels=["state"])
            host_blocks.add_metric(["total"], host.total)
            host_blocks.add_metric(["used"], host.used)
            yield host_blocks
            moved = CounterMetricFamily(f"{PREFIX}_host_kv_block_copies", "KV blocks copied to or from the host tier",
                                        labels=["direction"])
            moved.add_metric(["to_host"], host.saved_blocks)
            moved.add_metric(["to_gpu"], host.loaded_blocks)
            yield moved
        if (disk := s.blocks.disk) is not None:
            yield CounterMetricFamily(f"{PREFIX}_disk_hit_tokens", "Prompt tokens loaded back from the disk KV tier",
                                      value=s.blocks.disk_hit_tokens)
            disk_blocks = GaugeMetricFamily(f"{PREFIX}_disk_kv_blocks", "Disk KV tier blocks by state "
                                            "(restored: taken over from an earlier engine)", labels=["state"])
            for state, value in (("total", disk.total), ("used", disk.used), ("restored", disk.restored_blocks)):
                disk_blocks.add_metric([state], value)
            yield disk_blocks
            events = CounterMetricFamily(f"{PREFIX}_disk_kv_block_events", "Disk KV tier blocks written, loaded "
                                         "back (read ahead: from memory), evicted for others, or not written (every "
                                         "slot busy)", labels=["event"])
            for event, value in (("saved", disk.saved_blocks), ("loaded", disk.loaded_blocks),
                                 ("read_ahead", disk.read_ahead_blocks), ("evicted", disk.evicted_blocks),
                                 ("skipped", disk.skipped_saves)):
                events.add_metric([event], value)
            yield events
        for name, text, value in (("drafted_steps", "Decode steps that checked draft tokens", s.spec.drafted_steps),
                                  ("draft_tokens", "Draft tokens checked", s.spec.draft_tokens),
                                  ("accepted_tokens", "Draft tokens accepted", s.spec.accepted_tokens),
                                  ("draft_passes", "Forward passes of the draft model", s.spec.draft_passes)):
            yield CounterMetricFamily(f"{PREFIX}_spec_decode_{name}", text, value=value)
        pins = CounterMetricFamily(f"{PREFIX}_pin_events", "Session pin events", labels=["event"])
        for event in ("set", "refreshed", "expired", "evicted", "unpinned"):
            pins.add_metric([event], getattr(s.pins, event))
        yield pins


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.engine = EngineStatsCollector()
        self.registry.register(self.engine)
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Generation requests finished, by finish reason",
                                ["endpoint", "finish_reason"], registry=r)
        self.errors = Counter(f"{PREFIX}_request_errors", "Requests answered with an error",
                              ["endpoint", "status"], registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time to first token",
                              ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram(f"{PREFIX}_request_latency_seconds", "End-to-end request latency",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter(f"{PREFIX}_tokens", "Tokens of finished requests", ["kind"], registry=r)
        self.weight_updates = Counter(f"{PREFIX}_weight_updates", "POST /update_weights_from_disk calls by outcome "
                                      "(loaded, refused: a folder that will not do, busy: requests held)",
                                      ["outcome"], registry=r)

    def observe_finished(self, endpoint: str, last: RequestOutput, ttft_s: float | None, latency_s: float) -> None:
        self.requests.labels(endpoint, last.finish_reason or "unknown").inc()
        if ttft_s is not None:
            self.ttft.labels(endpoint).observe(ttft_s)
        self.latency.labels(endpoint).observe(latency_s)
        self.tokens.labels("prompt").inc(last.num_prompt_tokens)
        self.tokens.labels("cached_prompt").inc(last.num_cached_tokens)
        self.tokens.labels("completion").inc(last.num_output_tokens)

    def observe_error(self, endpoint: str, status: int) -> None:
        self.errors.labels(endpoint, str(status)).inc()

    def render(self, stats: EngineStats | None, healthy: bool, paused: bool = False,
               sleeping: tuple[str, ...] = ()) -> bytes:
        self.engine.stats, self.engine.healthy, self.engine.paused, self.engine.sleeping = (stats, healthy, paused,
                                                                                            sleeping)
        return generate_latest(self.registry)
