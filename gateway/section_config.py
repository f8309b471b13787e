"""The config's sections that are plain settings (storage, the Responses API's stores, the response cache,
vector stores, server limits), apart from gateway/config.py's Settings, which ties the sections together."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.latency_balance import RoutingStrategy
from gateway.semantic_config import SemanticCacheConfig
from gateway.strict_config import StrictConfig


class StorageConfig(StrictConfig):
    url: str = "sqlite:///var/pitstop.db"
    store_text: bool = True
    max_buffer: int = Field(default=50_000, gt=0)
    spool_path: str | None = "var/outcome-spool.jsonl"
    # Outcome rows and feedback older than this are deleted (hourly, gateway/outcome_retention.py); None
    # keeps them all: they are the routers' and rankers' training data.
    retention_days: float | None = Field(default=None, gt=0)
    # Admin audit events older than this are deleted by the same sweep; None keeps them for good (set it
    # to what your compliance asks: an audit trail usually outlives the traffic log).
    audit_retention_days: float | None = Field(default=None, gt=0)
    # Ended video jobs' rows (completed, failed, deleted) older than this are deleted by the same sweep; None
    # keeps them. Past it the gateway no longer knows the job (a 404): set it to the upstream's own keeping
    # of the assets (the Video's expires_at), past which the row points at a video that is gone.
    video_retention_days: float | None = Field(default=None, gt=0)

    @field_validator("url")
    @classmethod
    def _a_supported_database(cls, url: str) -> str:
        from storage.db import database_url  # noqa: PLC0415  (sqlalchemy: only once a config is read)

        database_url(url)  # ValueError names what is wrong
        return url


class ResponsesConfig(StrictConfig):
    """The Responses API's stored responses (gateway/stored_responses.py): kept unless the request says
    `store: false` (OpenAI's default), for `previous_response_id`, retrieval and deletion."""

    store: bool = True  # false: none are kept, whatever a request asks
    retention_days: float = Field(default=30.0, gt=0)  # then deleted (OpenAI keeps them 30 days)
    # Compaction (gateway/compaction.py): the model that writes the summaries (None: the request's own,
    # whose engine may still hold the conversation's prefix), the most tokens a summary may take (and
    # at most a quarter of its model's window), and the most the kept user messages may take (at most
    # a quarter of the threshold, or of the window).
    compaction_model: str | None = None
    compaction_max_tokens: int = Field(default=2048, gt=0)
    compaction_user_tokens: int = Field(default=20_000, gt=0)  # the user's latest messages kept word for word
    # Remote MCP tools (gateway/mcp_connections.py): a connection to a server is kept for the agent session
    # (conversation, chain, else the Response) and closed once idle this long; 0: one per listing or call.
    mcp_idle_s: float = Field(default=300.0, ge=0)


class StoredCompletionsConfig(StrictConfig):
    """Chat completions asked to be stored (`store: true`, gateway/stored_completions.py), listed and read
    back as at OpenAI (`GET /v1/chat/completions`): for distillation and evaluations."""

    enabled: bool = True  # false: none are kept, whatever a request asks
    retention_days: float = Field(default=30.0, gt=0)  # then deleted (OpenAI keeps them 30 days)


class CacheConfig(StrictConfig):
    """Answers kept and served again for the same request (gateway/response_cache.py); off unless set."""

    backend: Literal["local", "redis"] = "local"  # this replica's memory, or the Redis at redis_url (shared)
    # Which requests: `deterministic` (embeddings, and answers at temperature 0 or with a seed), `all`,
    # or `opt_in` (only those that ask); a request's `cache` field or x-pitstop-cache header decides too.
    requests: Literal["deterministic", "all", "opt_in"] = "deterministic"
    ttl_s: float = Field(default=3600.0, gt=0)  # how long an answer is kept unless the request says
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)  # the local store's budget (least recent go first)
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, gt=0)  # a larger answer is served, not kept
    shared_across_keys: bool = False  # false: an API key reads only the answers its own requests left
    semantic: SemanticCacheConfig | None = None  # a similar last user message served too; None: exact only


class VectorStoresConfig(StrictConfig):
    """What embeds vector stores' chunks and queries (gateway/vector_stores.py): None, all-MiniLM-L6-v2 in
    the gateway; else a model of `model_list` marked `mode: embedding`, called as /v1/embeddings would be.
    A store keeps the embedder it was made with."""

    embedding_model: str | None = None


class ServerConfig(StrictConfig):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # An audio upload (/v1/audio/transcriptions, /translations): OpenAI's 25 MB; past it a 413 (gateway/audio_upload.py).
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    num_retries: int = Field(default=2, ge=0)
    cooldown_s: float = Field(default=30.0, ge=0)
    allowed_fails: int = Field(default=3, ge=1)
    # How a model's deployments share its requests (gateway/latency_balance.py): least outstanding requests,
    # or "latency": the lowest expected wait, each deployment's measured speed x its requests in flight.
    routing_strategy: RoutingStrategy = "least-outstanding"
    # On SIGTERM, how long requests in flight may run on before they are cut (and logged as
    # aborted); None waits for all of them. Set it under the orchestrator's kill timeout.
    graceful_shutdown_s: float | None = Field(default=None, ge=0)
    batch_concurrency: int = Field(default=8, ge=1)  # a batch's requests in flight at once (gateway/batches.py)
    # How long a client's idle connection is kept open (uvicorn's timeout_keep_alive, 5 s by default). Longer
    # than clients keep theirs idle (httpx and the openai SDK 5 s, aiohttp 15 s), so a client never sends on a
    # connection the gateway is closing: at uvicorn's 5 s, 3.7% of aiohttp requests sent after 5 s idle failed
    # with ServerDisconnectedError (tests/gateway/test_keep_alive.py). nginx keeps 75 s too.
    keep_alive_s: float = Field(default=75.0, gt=0)
    # permessage-deflate on client WebSockets (/v1/realtime), for clients that offer it (the Agents SDK, browsers;
    # the openai SDK does not). Off: it saves a quarter of the bytes of realtime audio (base64 pcm16 deflates to
    # 0.74) but costs the gateway 9.6x the CPU an event (0.22 against 0.023 ms) and a burst 0.15x the events a second
    # (bench/results/realtime_compression.json); on where the clients' links are what is short.
    websocket_deflate: bool = False
    # Seconds between looks at the config file: a changed file's model list is reloaded (gateway/config_reload.py),
    # as a Kubernetes ConfigMap's update reaches every replica. None: only on SIGHUP or POST /config/reload.
    watch_config_s: float | None = Field(default=None, gt=0)

    @property
    def longest_call_s(self) -> float:
        """The longest one request's calls can take, every retry at its timeout."""
        return self.request_timeout_s * (self.num_retries + 1)
