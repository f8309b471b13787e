"""The gateway's one YAML file: models (litellm's `model_list` style), route groups, storage, Redis,
auth and server limits. Validation names the failing field, e.g. `model_list.1.litellm_params.model`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent_sessions.config import SessionsConfig
from engine.config import KVCacheDtype
from gateway.access_config import AlertsConfig, AuthConfig, LimitsConfig, WebhooksConfig
from gateway.route_group_config import GroupVerify, RouteGroup
from rankers.config import RankingConfig
from routers.verify import VerifyPolicy

log = logging.getLogger("pitstop.config")

ENV_PREFIX = "os.environ/"
# Model strings Pitstop serves itself; everything else goes through litellm.
LOCAL_PROVIDER = "pitstop-local"  # an in-process engine instance on a local model folder
ENGINE_PROVIDER = "pitstop-engine"  # a `pitstop engine serve` instance over HTTP


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelSpec(_Strict):
    layers: int = Field(default=2, ge=1, le=64)
    hidden: int = Field(default=64, ge=16, le=8192)
    seed: int = 0


class SpeculativeSpec(_Strict):
    """vLLM's `speculative_config` for an engine in this process (engine/speculation.py): n-gram drafts."""

    method: Literal["ngram"] = "ngram"
    num_speculative_tokens: int = Field(default=4, ge=1, le=64)
    prompt_lookup_max: int = Field(default=4, ge=1, le=64)
    prompt_lookup_min: int = Field(default=2, ge=1, le=64)
    draft_policy: Literal["fixed", "goodput"] = "fixed"  # goodput: drafts cut to what pays (engine/draft_length.py)
    step_time_profile: str | None = None  # what prices them: `pitstop engine profile`'s file

    @model_validator(mode="after")
    def _lookup_range(self) -> SpeculativeSpec:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min must not exceed prompt_lookup_max")
        return self


class LitellmParams(BaseModel):
    """litellm's per-deployment parameters; unknown keys are passed to litellm unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    # Local engine instances only:
    model_dir: str | None = None
    num_blocks: int | None = Field(default=None, gt=0)
    # Host memory for KV blocks the GPU evicts, loaded back on a prefix hit (engine/host_cache.py).
    host_kv_gib: float = Field(default=0.0, ge=0)
    # How KV blocks are stored: the model's dtype, or fp8 (half the bytes a token: engine/model/kv_quant.py).
    kv_cache_dtype: KVCacheDtype = "auto"
    calculate_kv_scales: bool = False  # an fp8 cache's scales measured on the first step (vLLM's flag)
    # LoRA adapters (PEFT folders, relative to the config file) served by this engine, each a model of the
    # gateway under its name, with this entry's model_info (engine/model/lora.py).
    lora_modules: dict[str, str] | None = None
    # Set on the entries the gateway makes for those adapters: the index of the entry whose engine serves it.
    _adapter_of: int | None = PrivateAttr(default=None)
    max_num_seqs: int = Field(default=64, gt=0)
    max_model_len: int | None = Field(default=None, gt=0)
    policy: str = "program-rank"  # returning agent programs first (engine/program_policy.py), then rank (with aging)
    device: str | None = None
    reasoning_parser: Literal["think"] | None = None  # split a reasoning model's <think> block (engine/reasoning.py)
    tool_call_parser: Literal["hermes", "llama3_json"] | None = None  # tool calls written as text (engine/tool_parsers.py)
    speculative_config: SpeculativeSpec | None = None  # n-gram speculative decoding (engine/speculation.py)
    # OpenAI-compatible servers (hosted_vllm/, openai/ with api_base) speak the wire format the
    # gateway already has: `auto` sends to them directly with httpx, skipping litellm's translation.
    transport: Literal["auto", "litellm", "direct"] = "auto"
    # Build a tiny random model into model_dir on first start when the folder is absent (embedded default).
    tiny_model: TinyModelSpec | None = None

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else ""

    @model_validator(mode="after")
    def _local_needs_a_folder(self) -> LitellmParams:
        if self.provider == LOCAL_PROVIDER and not self.model_dir:
            raise ValueError(f"model '{self.model}' is a local engine: set litellm_params.model_dir")
        if self.host_kv_gib and self.provider != LOCAL_PROVIDER:
            raise ValueError(f"model '{self.model}': host_kv_gib is for engines in this process (pitstop-local/); "
                             "a pitstop engine takes --host-kv-memory itself")
        for name in ("reasoning_parser", "tool_call_parser", "speculative_config", "kv_cache_dtype", "lora_modules",
                     "calculate_kv_scales"):
            if getattr(self, name) not in (None, "auto", False) and self.provider != LOCAL_PROVIDER:
                raise ValueError(f"model '{self.model}': {name} is for engines in this process (pitstop-local/); "
                                 f"a pitstop engine or vLLM server takes --{name.replace('_', '-')} itself")
        if self.provider == ENGINE_PROVIDER and not self.api_base:
            raise ValueError(f"model '{self.model}' is a Pitstop engine over HTTP: set litellm_params.api_base")
        return self


class ModelInfo(_Strict):
    input_cost_per_token: float = Field(default=0.0, ge=0)
    output_cost_per_token: float = Field(default=0.0, ge=0)
    tier: Literal["weak", "medium", "strong"] = "medium"
    # The model a learned router knows this deployment as (a name in its training data, e.g.
    # "gpt-4-1106-preview"); default: model_name. Unknown to the router: the tier prior applies.
    router_model: str | None = None
    max_concurrency: int | None = Field(default=None, gt=0)
    # Requests that may wait for one of those slots; past it a request is a 429 (tried first on the
    # model's other deployments). None: the queue is unbounded.
    max_queue: int | None = Field(default=None, ge=0)
    # litellm's `mode`: "embedding" marks a model that serves POST /v1/embeddings only (kept out of route
    # groups; a chat or completion request to it is a 400). Any model not on Pitstop's engines may
    # still be sent embeddings requests: its upstream decides.
    mode: Literal["chat", "completion", "embedding"] | None = None
    # litellm's too: the longest answer it gives. A request that sets no max_tokens holds this much
    # output of its key's budget while it runs (gateway/budget_holds.py; default 4096 tokens).
    max_output_tokens: int | None = Field(default=None, gt=0)
    # litellm's too: the most prompt tokens the model takes, what a Responses turn with `truncation: auto`
    # is fitted into (gateway/truncation.py). None: what its deployments say (a Pitstop engine's context
    # length, the max_model_len a vLLM server lists, litellm's price map).
    max_input_tokens: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _queue_needs_a_limit(self) -> ModelInfo:
        if self.max_queue is not None and self.max_concurrency is None:
            raise ValueError("max_queue bounds the queue behind max_concurrency: set max_concurrency too")
        return self


class ModelEntry(_Strict):
    model_name: str = Field(min_length=1)
    litellm_params: LitellmParams
    model_info: ModelInfo = Field(default_factory=ModelInfo)

    @property
    def serves_embeddings(self) -> bool:
        """Whether embeddings requests may go to it: on Pitstop's engines, a model marked `mode: embedding`
        (last-token pooling: engine/openai_embeddings.py); elsewhere, the upstream decides."""
        if self.litellm_params.provider in (LOCAL_PROVIDER, ENGINE_PROVIDER):
            return self.model_info.mode == "embedding"
        return True


class StorageConfig(_Strict):
    url: str = "sqlite:///var/pitstop.db"
    store_text: bool = True
    max_buffer: int = Field(default=50_000, gt=0)
    spool_path: str | None = "var/outcome-spool.jsonl"
    # Outcome rows and feedback older than this are deleted (hourly, gateway/outcome_retention.py); None
    # keeps them all: they are the routers' and rankers' training data.
    retention_days: float | None = Field(default=None, gt=0)

    @field_validator("url")
    @classmethod
    def _a_supported_database(cls, url: str) -> str:
        from storage.db import database_url  # noqa: PLC0415  (sqlalchemy: only once a config is read)

        database_url(url)  # ValueError names what is wrong
        return url


class ResponsesConfig(_Strict):
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


class StoredCompletionsConfig(_Strict):
    """Chat completions asked to be stored (`store: true`, gateway/stored_completions.py), listed and read
    back as at OpenAI (`GET /v1/chat/completions`): for distillation and evaluations."""

    enabled: bool = True  # false: none are kept, whatever a request asks
    retention_days: float = Field(default=30.0, gt=0)  # then deleted (OpenAI keeps them 30 days)


class CacheConfig(_Strict):
    """Answers kept and served again for the same request (gateway/response_cache.py); off unless set."""

    backend: Literal["local", "redis"] = "local"  # this replica's memory, or the Redis at redis_url (shared)
    # Which requests: `deterministic` (embeddings, and answers at temperature 0 or with a seed), `all`,
    # or `opt_in` (only those that ask); a request's `cache` field or x-pitstop-cache header decides too.
    requests: Literal["deterministic", "all", "opt_in"] = "deterministic"
    ttl_s: float = Field(default=3600.0, gt=0)  # how long an answer is kept unless the request says
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)  # the local store's budget (least recent go first)
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, gt=0)  # a larger answer is served, not kept
    shared_across_keys: bool = False  # false: an API key reads only the answers its own requests left


class VectorStoresConfig(_Strict):
    """What embeds vector stores' chunks and queries (gateway/vector_stores.py): None, all-MiniLM-L6-v2 in
    the gateway; else a model of `model_list` marked `mode: embedding`, called as /v1/embeddings would be.
    A store keeps the embedder it was made with."""

    embedding_model: str | None = None


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    num_retries: int = Field(default=2, ge=0)
    cooldown_s: float = Field(default=30.0, ge=0)
    allowed_fails: int = Field(default=3, ge=1)
    # On SIGTERM, how long requests in flight may run on before they are cut (and logged as
    # aborted); None waits for all of them. Set it under the orchestrator's kill timeout.
    graceful_shutdown_s: float | None = Field(default=None, ge=0)
    batch_concurrency: int = Field(default=8, ge=1)  # a batch's requests in flight at once (gateway/batches.py)


class Settings(_Strict):
    model_list: list[ModelEntry] = Field(min_length=1)
    route_groups: list[RouteGroup] = Field(default_factory=list)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    redis_url: str | None = None
    cache: CacheConfig | None = None  # answers served again (gateway/response_cache.py); None: off
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)  # budget alerts, as webhook events
    stored_completions: StoredCompletionsConfig = Field(default_factory=StoredCompletionsConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)  # events to /v1/webhook_endpoints
    server: ServerConfig = Field(default_factory=ServerConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)  # output-length ranking (rankers/)
    vector_stores: VectorStoresConfig = Field(default_factory=VectorStoresConfig)
    base_dir: Path = Path(".")  # relative paths resolve against the working directory

    @model_validator(mode="after")
    def _cache_backend_reachable(self) -> Settings:
        if self.cache is not None and self.cache.backend == "redis" and self.redis_url is None:
            raise ValueError("cache.backend: 'redis' needs redis_url")
        return self

    @field_validator("route_groups")
    @classmethod
    def _unique_groups(cls, groups: list[RouteGroup]) -> list[RouteGroup]:
        names = [g.name for g in groups]
        if len(names) != len(set(names)):
            raise ValueError("route group names must be unique")
        return groups

    @model_validator(mode="after")
    def _lora_adapters_are_models(self) -> Settings:
        """An in-process engine's `lora_modules` are models of their own, served by that engine: one entry
        each, after the listed ones, with the base entry's model_info (its prices and tier)."""
        listed = {m.model_name for m in self.model_list}
        for i, entry in enumerate(list(self.model_list)):
            for name in entry.litellm_params.lora_modules or {}:
                if name in listed:
                    raise ValueError(f"model_list.{i}.litellm_params.lora_modules: '{name}' is already a model_name")
                listed.add(name)
                params = entry.litellm_params.model_copy(update={"model": f"{LOCAL_PROVIDER}/{name}",
                                                                 "lora_modules": None})
                params._adapter_of = i
                self.model_list.append(ModelEntry(model_name=name, litellm_params=params,
                                                  model_info=entry.model_info))
        return self

    @model_validator(mode="after")
    def _groups_name_known_models(self) -> Settings:
        known = {m.model_name for m in self.model_list}
        for i, group in enumerate(self.route_groups):
            if group.name in known:
                raise ValueError(f"route_groups.{i}.name: '{group.name}' is also a model_name")
            for model in group.models:
                if model not in known:
                    raise ValueError(f"route_groups.{i}.models: unknown model_name '{model}'")
                if model in self.embedding_models:
                    raise ValueError(f"route_groups.{i}.models: '{model}' is an embedding model (model_info.mode)")
            infos = {m.model_name: m.model_info for m in self.model_list}
            aliases = [infos[m].router_model or m for m in dict.fromkeys(group.models)]
            if len(aliases) != len(set(aliases)):
                raise ValueError(f"route_groups.{i}.models: two models share a model_info.router_model")
            target = group.calibrate.model if group.calibrate is not None else None
            if target is not None and target not in group.models:
                raise ValueError(f"route_groups.{i}.calibrate.model: '{target}' is not one of the group's models")
            if group.calibrate is not None and group.calibrate.traffic == "outcomes" and not self.storage.store_text:
                raise ValueError(f"route_groups.{i}.calibrate.traffic: 'outcomes' reads the logged prompts, which "
                                 "need storage.store_text: true (or calibrate on a data set or an export file)")
            if group.verify is not None:
                _check_verify(f"route_groups.{i}.verify", group.verify, known, self.embedding_models)
        embedder = self.vector_stores.embedding_model
        if embedder is not None and embedder not in self.embedding_models:
            raise ValueError(f"vector_stores.embedding_model: '{embedder}' is not a model_name with "
                             "model_info.mode: embedding")
        summariser = self.responses.compaction_model
        groups = {g.name for g in self.route_groups}
        if summariser is not None and (summariser not in known | groups or summariser in self.embedding_models):
            raise ValueError(f"responses.compaction_model: '{summariser}' is not a chat model_name or route group")
        return self

    def verify_policy(self, group: RouteGroup) -> VerifyPolicy | None:
        """The group's verify settings with `escalate_to` resolved; None when it does not verify."""
        verify = group.verify
        if verify is None:
            return None
        infos = {m.model_name: m.model_info for m in self.model_list}
        # Costliest by output price, then input price, then the later listed.
        costliest = max(enumerate(group.models), key=lambda im: (
            infos[im[1]].output_cost_per_token, infos[im[1]].input_cost_per_token, im[0]))[1]
        return VerifyPolicy(tuple(verify.verifiers), verify.escalate_to or costliest, verify.count, verify.below)

    @property
    def model_names(self) -> list[str]:
        return list(dict.fromkeys(m.model_name for m in self.model_list))

    @property
    def embedding_models(self) -> set[str]:
        """Models that serve embeddings only (model_info.mode: embedding)."""
        return {m.model_name for m in self.model_list if m.model_info.mode == "embedding"}

    @property
    def embeddings_served_by(self) -> set[str]:
        """Models embeddings requests may go to: those with a deployment not on Pitstop's engines."""
        return {m.model_name for m in self.model_list if m.serves_embeddings}

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


def _check_verify(where: str, verify: GroupVerify, known: set[str], embedding: set[str]) -> None:
    for field, model in [*(("verifiers", m) for m in verify.verifiers), ("escalate_to", verify.escalate_to)]:
        if model is not None and model not in known:
            raise ValueError(f"{where}.{field}: unknown model_name '{model}'")
        if model in embedding:
            raise ValueError(f"{where}.{field}: '{model}' is an embedding model (model_info.mode)")


def _resolve_env(value: Any, path: str, missing: list[str]) -> Any:
    """Replace `os.environ/NAME` strings; remember where a variable is unset."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            missing.append(f"{path} ({name})")
            return None
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolve_env(v, f"{path}.{k}" if path else k, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}.{i}", missing) for i, v in enumerate(value)]
    return value


def _drop_models_without_keys(raw: dict) -> dict:
    """API-provider models join only when their keys are in the environment."""
    if not isinstance(raw.get("model_list") or [], list) or not isinstance(raw.get("route_groups") or [], list):
        return raw  # validation names the field
    kept, dropped = [], []
    for i, entry in enumerate(raw.get("model_list") or []):
        missing: list[str] = []
        resolved = _resolve_env(entry, f"model_list.{i}", missing)
        if missing:
            dropped.append((entry.get("model_name") if isinstance(entry, dict) else None, missing))
        else:
            kept.append(resolved)
    for name, missing in dropped:
        log.info("model %s skipped: environment variable not set for %s", name, ", ".join(missing))
    dropped_names = {name for name, _ in dropped}
    groups = []
    for group in raw.get("route_groups") or []:
        if isinstance(group, dict) and isinstance(group.get("models"), list):
            group = {**group, "models": [m for m in group["models"] if m not in dropped_names]}
        if isinstance(group, dict) and isinstance(group.get("verify"), dict) and dropped_names:
            group = {**group, "verify": _drop_from_verify(group["verify"], dropped_names, group.get("name"))}
        groups.append(group)
    return {**raw, "model_list": kept, "route_groups": groups}


def _drop_from_verify(verify: dict, dropped: set[str], group: Any) -> dict | None:
    """Models left out for want of a key leave the verify settings too: with no verifier left the group
    serves unverified; without its escalation model it escalates to its costliest remaining one."""
    verify = dict(verify)
    verifiers = verify.get("verifiers")
    if isinstance(verifiers, list):
        kept = [v for v in verifiers if not (isinstance(v, str) and v in dropped)]
        if verifiers and not kept:
            log.info("route group %s: no verifier has its key set; it serves unverified", group)
            return None
        verify["verifiers"] = kept
        count = verify.get("count")
        if isinstance(count, int) and count > len(kept):
            verify["count"] = len(kept)
    escalate_to = verify.get("escalate_to")
    if isinstance(escalate_to, str) and escalate_to in dropped:
        log.info("route group %s: escalate_to %s skipped; escalating to the group's costliest model", group,
                 escalate_to)
        verify["escalate_to"] = None
    return verify


def parse_settings(raw: dict, base_dir: Path = Path(".")) -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping")
    raw = _drop_models_without_keys(raw)
    missing: list[str] = []
    rest = _resolve_env({k: v for k, v in raw.items() if k != "model_list"}, "", missing)
    if missing:
        raise ConfigError("environment variables not set: " + ", ".join(missing))
    try:
        return Settings.model_validate({**rest, "model_list": raw["model_list"], "base_dir": base_dir})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None


def load_settings(path: str | Path) -> Settings:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_settings(raw)
