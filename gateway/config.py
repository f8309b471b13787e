"""The gateway's one YAML file: models (litellm's `model_list` style), route groups, storage, Redis,
auth and server limits. Validation names the failing field, e.g. `model_list.1.litellm_params.model`."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent_sessions.config import SessionsConfig
from gateway.access_config import AlertsConfig, AuthConfig, LimitsConfig, WebhooksConfig
from gateway.config_env import drop_models_without_keys, resolve_env
from gateway.deployment_limits_config import DeploymentLimitsConfig
from gateway.fallback_config import FallbacksConfig
from gateway.guardrails_config import GuardrailConfig, check_guardrails
from gateway.health_check_config import HealthCheckConfig
from gateway.hedging_config import HedgingConfig, check_hedging
from gateway.mcp_gateway_config import McpServerList
from gateway.model_list_config import LOCAL_PROVIDER, MEDIA_MODES, ModelEntry, split_wildcards
from gateway.outbound_config import OutboundConfig
from gateway.route_group_config import GroupVerify, RouteGroup
from gateway.section_config import (
    CacheConfig,
    ResponsesConfig,
    ServerConfig,
    StorageConfig,
    StoredCompletionsConfig,
    VectorStoresConfig,
)
from gateway.semantic_config import BUILT_IN_ENCODERS
from gateway.strict_config import StrictConfig
from gateway.tracing_config import TracingConfig
from rankers.config import RankingConfig
from routers.verify import VerifyPolicy

log = logging.getLogger("pitstop.config")

class ConfigError(ValueError):
    pass


class Settings(StrictConfig):
    model_list: list[ModelEntry] = Field(min_length=1)
    route_groups: list[RouteGroup] = Field(default_factory=list)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    redis_url: str | None = None
    # rpm / tpm windows shared through redis_url (gateway/deployment_limits_sync.py)
    deployment_limits: DeploymentLimitsConfig = Field(default_factory=DeploymentLimitsConfig)
    cache: CacheConfig | None = None  # answers served again (gateway/response_cache.py); None: off
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)  # budget alerts, as webhook events
    stored_completions: StoredCompletionsConfig = Field(default_factory=StoredCompletionsConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)  # events to /v1/webhook_endpoints
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)  # where clients' URLs may lead (SSRF)
    server: ServerConfig = Field(default_factory=ServerConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)  # output-length ranking (rankers/)
    vector_stores: VectorStoresConfig = Field(default_factory=VectorStoresConfig)
    fallbacks: FallbacksConfig = Field(default_factory=FallbacksConfig)  # models that answer when one cannot
    hedging: HedgingConfig = Field(default_factory=HedgingConfig)  # slow calls sent again (gateway/hedging.py)
    health_checks: HealthCheckConfig | None = None  # deployments probed between requests (gateway/health_checks.py)
    tracing: TracingConfig | None = None  # OpenTelemetry spans of each request (gateway/tracing.py); None: off
    guardrails: list[GuardrailConfig] = Field(default_factory=list)  # checks on calls (gateway/guardrails.py)
    mcp_servers: McpServerList = Field(default_factory=list)  # aggregated at /mcp (gateway/mcp_gateway.py)
    base_dir: Path = Path(".")  # relative paths resolve against the working directory
    _wildcards: list[ModelEntry] = PrivateAttr(default_factory=list)  # model_list entries named with a `*`
    _source_path: Path | None = PrivateAttr(default=None)  # the file it was read from (load_settings)

    @model_validator(mode="after")
    def _cache_backend_reachable(self) -> Settings:
        if self.cache is not None and self.cache.backend == "redis" and self.redis_url is None:
            raise ValueError("cache.backend: 'redis' needs redis_url")
        semantic = self.cache.semantic if self.cache is not None else None
        if semantic is not None and semantic.encoder not in BUILT_IN_ENCODERS \
                and semantic.encoder not in self.embedding_models:
            raise ValueError(f"cache.semantic.encoder: '{semantic.encoder}' is neither one of "
                             f"{list(BUILT_IN_ENCODERS)} nor a model_name with model_info.mode: embedding")
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
    def _wildcards_apart(self) -> Settings:
        """Entries named with a `*` serve the names they match (gateway/wildcards.py): kept apart from the
        listed models, in `wildcards`."""
        self.model_list, self._wildcards = split_wildcards(self.model_list)
        for i, group in enumerate(self.route_groups):
            for model in group.models:
                if "*" in model:
                    raise ValueError(f"route_groups.{i}.models: '{model}' is a wildcard; a route group chooses "
                                     "among models it names")
        return self

    @property
    def source_path(self) -> Path | None:
        """The config file these settings were read from, read again by a reload (gateway/config_reload.py)."""
        return self._source_path

    @property
    def wildcards(self) -> list[ModelEntry]:
        return self._wildcards

    def wildcard_for(self, name: str) -> ModelEntry | None:
        """The first wildcard entry whose pattern `name` matches."""
        from gateway.wildcards import name_matches

        return next((w for w in self._wildcards if name_matches(w.model_name, name)), None)

    def serves(self, name: str) -> bool:
        """Whether `name` is a model or route group here, a wildcard entry's name, or a name one matches:
        what an API key's `models` may list."""
        from gateway.wildcards import name_matches

        return (name in self.model_names or any(g.name == name for g in self.route_groups)
                or any(name_matches(w.model_name, name) or w.model_name == name for w in self._wildcards))

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
        for model in sorted(self.fallbacks.models()):
            wildcard = "*" not in model and self.wildcard_for(model) is not None  # a name a wildcard serves
            if (model not in known and not wildcard) or model in self.embedding_models:
                raise ValueError(f"fallbacks: '{model}' is not a chat model_name (or a name a wildcard matches)")
        check_guardrails(self.guardrails, {g.name: g.models for g in self.route_groups}, self.serves,
                         self.moderation_models)
        check_hedging(self.hedging, lambda m: m in known and m not in self.embedding_models,
                      lambda m: sum(e.model_name == m for e in self.model_list))
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

    @property
    def rerank_models(self) -> set[str]:
        """Cross-encoders that serve /v1/rerank only (model_info.mode: rerank; gateway/rerank.py)."""
        return {m.model_name for m in self.model_list if m.model_info.mode == "rerank"}

    @property
    def classify_models(self) -> set[str]:
        """Sequence classifiers that serve vLLM's /classify only (model_info.mode: classify; gateway/vllm_endpoints.py)."""
        return {m.model_name for m in self.model_list if m.model_info.mode == "classify"}

    @property
    def moderation_models(self) -> set[str]:
        """Classifiers that serve /v1/moderations only (model_info.mode: moderation; gateway/moderation.py)."""
        return {m.model_name for m in self.model_list if m.model_info.mode == "moderation"}

    @property
    def media_models(self) -> dict[str, set[str]]:
        """Audio and image models by their mode (model_info.mode: audio_transcription, audio_speech,
        image_generation; gateway/media.py): each serves its endpoints only."""
        return {mode: {m.model_name for m in self.model_list if m.model_info.mode == mode} for mode in MEDIA_MODES}

    @property
    def realtime_models(self) -> set[str]:
        """Models marked for the Realtime API only (model_info.mode: realtime; gateway/realtime.py)."""
        return {m.model_name for m in self.model_list if m.model_info.mode == "realtime"}

    @model_validator(mode="after")
    def _rerank_models_only_rerank(self) -> Settings:
        """A reranker (or a moderation, media or realtime model) answers no chat: it is in no route group,
        verification, fallback chain or compaction, and every deployment of its name reranks (moderates, ...): the
        dispatcher may send the call to any of them."""
        chats = [*((f"route_groups.{i}.models", m) for i, g in enumerate(self.route_groups) for m in g.models),
                 *((f"route_groups.{i}.verify", m) for i, g in enumerate(self.route_groups) if g.verify
                   for m in (*g.verify.verifiers, g.verify.escalate_to)),
                 *(("fallbacks", m) for m in self.fallbacks.models()),
                 ("responses.compaction_model", self.responses.compaction_model)]
        for mode, what, models, path in (("rerank", "a reranker", self.rerank_models, "/v1/rerank"),
                                         ("classify", "a classifier", self.classify_models, "/classify"),
                                         ("moderation", "a moderation model", self.moderation_models,
                                          "/v1/moderations"),
                                         *((mode, f"an {mode} model", names, MEDIA_PATHS[mode])
                                           for mode, names in self.media_models.items())):
            for name in sorted(models):
                if any(m.model_info.mode != mode for m in self.model_list if m.model_name == name):
                    raise ValueError(f"model_list: '{name}' has entries marked model_info.mode: {mode} and entries "
                                     f"not: every deployment of {what} serves {path}")
            for where, model in chats:
                if model in models:
                    raise ValueError(f"{where}: '{model}' is {what} (model_info.mode: {mode}), which serves "
                                     f"{path} only")
        self._realtime_only_with_realtime(chats)
        return self

    def _realtime_only_with_realtime(self, chats: list[tuple[str, str | None]]) -> None:
        """A realtime model (gateway/realtime.py) answers no chat, and falls back to realtime models only (a
        session's fallback is chosen at connect: gateway/realtime_target.py)."""
        realtime = self.realtime_models
        for where, model in chats:
            if model in realtime and where != "fallbacks":
                raise ValueError(f"{where}: '{model}' is a realtime model (model_info.mode: realtime), which serves "
                                 "/v1/realtime only")
        for chains in (self.fallbacks.on_error, self.fallbacks.on_context_window):
            for model, chain in chains.items():
                names = {model, *chain}
                if names & realtime and not names <= realtime:
                    raise ValueError(f"fallbacks: '{model}' -> {chain} mixes realtime models (model_info.mode: "
                                     "realtime) and others: a realtime model falls back to realtime models only")

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


MEDIA_PATHS = {"audio_transcription": "/v1/audio/transcriptions and /translations", "audio_speech": "/v1/audio/speech",
               "image_generation": "/v1/images/generations and /edits", "video_generation": "/v1/videos"}


def _check_verify(where: str, verify: GroupVerify, known: set[str], embedding: set[str]) -> None:
    for field, model in [*(("verifiers", m) for m in verify.verifiers), ("escalate_to", verify.escalate_to)]:
        if model is not None and model not in known:
            raise ValueError(f"{where}.{field}: unknown model_name '{model}'")
        if model in embedding:
            raise ValueError(f"{where}.{field}: '{model}' is an embedding model (model_info.mode)")


def parse_settings(raw: dict, base_dir: Path = Path(".")) -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping")
    raw = drop_models_without_keys(raw)
    missing: list[str] = []
    rest = resolve_env({k: v for k, v in raw.items() if k != "model_list"}, "", missing)
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
    settings = parse_settings(raw)
    settings._source_path = path.resolve()
    return settings
