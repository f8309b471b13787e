"""The `sessions:` section of the gateway's YAML file."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SessionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    idle_expiry_s: float = Field(default=3600.0, gt=0)  # a session with no turn for this long is forgotten
    # Pin every agent turn at its finish for this long, until the gateway sees the response and sets
    # the chosen TTL (or releases it): the KV cannot be lost between the two.
    provisional_ttl_s: float = Field(default=10.0, ge=0, le=3600)
    max_ttl_s: float = Field(default=120.0, gt=0, le=86400)
    # Converts a lost context into engine time (re-prefill) for the TTL choice.
    prefill_tokens_per_s: float = Field(default=4000.0, gt=0)
    attention_knee_tokens: float = Field(default=50_000.0, gt=0)  # see agent_sessions/ttl_policy.py
    # How fast KV crosses the host link, for engines with a host KV tier (engine/host_cache.py): losing a
    # context costs its copies out and back, when that is cheaper than the re-prefill.
    host_copy_tokens_per_s: float = Field(default=400_000.0, gt=0)
    # How fast an engine's disk KV tier (engine/disk_cache.py) reads KV back: a context only the disk can
    # hold costs those copies and this read (Llama-3.1-8B's 128 KiB a token at 80% of one NVMe's 6 GB/s).
    disk_read_tokens_per_s: float = Field(default=36_000.0, gt=0)
    # KV capacity assumed for deployments that do not report theirs (engine servers over HTTP).
    default_kv_capacity_tokens: int = Field(default=1 << 20, gt=0)
    # Memory is never free: the pin's cost counts at least this share of full contention.
    memory_pressure_floor: float = Field(default=0.25, ge=0, le=1)
    memory_cost_weight: float = Field(default=0.25, ge=0)  # see agent_sessions/ttl_policy.py
    overload_slack: int = Field(default=8, ge=0)
    overload_ratio: float = Field(default=3.0, ge=1)
    # A request that names no session goes to the instance of its model that served the longest prefix of
    # it lately, when that prefix is at least this many characters (agent_sessions/prefix_affinity.py);
    # 0: off, such requests go to the least loaded instance.
    prefix_affinity_min_chars: int = Field(default=2048, ge=0)
    # Fitted by `pitstop train tool-durations`; missing: the cold-start prior, learning online.
    tool_durations: str | None = "var/agent_sessions/tool_durations.json"
    redis_prefix: str = "default"
