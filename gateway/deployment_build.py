"""Deployments built from the config's model entries: a backend for each (an engine in this process, a
Pitstop engine or OpenAI-compatible server over HTTP, anything else through litellm), in the pool with
its admission queue; a LoRA adapter's on its base's engine; a wildcard's names as they are first asked for
(gateway/wildcards.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from engine.classifier_config import ClassifierHead, classifier_head
from engine.config import ImageLimits
from engine.cross_encoder_config import cross_encoder_config
from engine.hf_overrides import with_hf_overrides
from engine.net_guard import OutboundPolicy
from gateway.admission import make_admission
from gateway.backends.base import Backend
from gateway.backends.openai_tokens import OPENAI_PROVIDERS
from gateway.config import ConfigError, Settings
from gateway.deployment_limits import make_window, shared_id
from gateway.deployments import Deployment, DeploymentPool
from gateway.image_tokens import ImageTokens, image_tokens_for
from gateway.model_list_config import (
    ENCODER_PROVIDER,
    ENGINE_PROVIDER,
    LOCAL_PROVIDER,
    SCORER_ENGINE_KEYS,
    ImageLimitsSpec,
    ModelEntry,
)

log = logging.getLogger("pitstop.gateway")
OPENAI_COMPATIBLE = {"hosted_vllm", "openai", "openai_like"}

def make_backend(entry: ModelEntry, settings: Settings,
                 outbound: Callable[[], OutboundPolicy] | None = None) -> Backend:
    """`outbound`: the gateway's URL rules in force (reloaded), which an in-process engine's image fetches follow;
    None: the config's `outbound:` as it reads now."""
    params = entry.litellm_params
    provider = params.provider
    if provider == LOCAL_PROVIDER:
        from engine.build import build_engine
        from engine.config import SpeculativeConfig
        from gateway.backends.local import LocalEngineBackend

        model_dir = _overridden(entry, settings.resolve_path(params.model_dir))
        if entry.model_info.mode in ("rerank", "classify"):
            return _cross_encoder_backend(entry, model_dir)
        if cross_encoder_config(model_dir) is not None:
            raise ConfigError(f"model {entry.model_name}: {model_dir} is a cross-encoder (a reranker): set "
                              "model_info.mode: rerank, and /v1/rerank serves it")
        if (head := _classifier(entry, model_dir)) is not None:
            one = "set model_info.mode: rerank, and /v1/rerank serves it (or mode: classify, and /classify)"
            raise ConfigError(f"model {entry.model_name}: {model_dir} is a sequence classifier of {head.num_labels} "
                              f"label(s), which generates nothing: " + (one if head.num_labels == 1 else
                              "set model_info.mode: classify, and /classify serves it"))
        if params.tiny_model is not None and not (model_dir / "config.json").exists():
            from engine.tiny_model import make_tiny_model

            log.info("building tiny model %s into %s", entry.model_name, model_dir)
            make_tiny_model(model_dir, layers=params.tiny_model.layers, hidden=params.tiny_model.hidden,
                            seed=params.tiny_model.seed)
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"model {entry.model_name}: litellm_params.model_dir {model_dir} is not a model folder "
                              "(no config.json; give a Hugging Face folder, or tiny_model: to build a test one)")
        lora_modules = {name: str(settings.resolve_path(path)) for name, path in (params.lora_modules or {}).items()}
        try:
            speculative = None
            if (spec := params.speculative_config) is not None:
                # relative to the config file, as model_dir
                speculative = SpeculativeConfig(**(spec.model_dump() | {
                    name: str(settings.resolve_path(path))
                    for name in ("step_time_profile", "model", "draft_step_time_profile")
                    if (path := getattr(spec, name)) is not None}))
            engine = build_engine(model_dir, num_blocks=params.num_blocks,
                                  max_model_len=params.max_model_len, max_num_seqs=params.max_num_seqs,
                                  policy=params.policy, device=params.device, speculative=speculative,
                                  host_kv_memory_bytes=int(params.host_kv_gib * 2**30),
                                  kv_cache_dtype=params.kv_cache_dtype, lora_modules=lora_modules,
                                  calculate_kv_scales=params.calculate_kv_scales, quantization=params.quantization,
                                  tensor_parallel_size=params.tensor_parallel_size,
                                  reasoning_effort_budgets=params.reasoning_effort_budgets,
                                  disk_kv_path=params.disk_kv_path and settings.resolve_path(params.disk_kv_path),
                                  disk_kv_bytes=int(params.disk_kv_gib * 2**30),
                                  image_limits=_image_limits(params.image_limits, outbound or _rules_of(settings)),
                                  dequantize_mxfp4=params.dequantize_mxfp4,
                                  hybrid_kv_cache=not params.disable_hybrid_kv_cache_manager,
                                  enable_prompt_embeds=params.enable_prompt_embeds)
        except ValueError as exc:  # a bad speculative_config's profile, a checkpoint it cannot serve, say
            raise ConfigError(f"model {entry.model_name}: {exc}") from exc
        return LocalEngineBackend(engine, entry.model_name, params.reasoning_parser, params.tool_call_parser,
                                  serves_embeddings=entry.serves_embeddings)
    if provider == ENCODER_PROVIDER:
        from gateway.backends.encoder import EncoderBackend
        from gateway.semantic_encoders import shared_passage_encoder

        return EncoderBackend(entry.model_name, shared_passage_encoder())
    direct = params.transport == "direct" or (
        params.transport == "auto" and params.api_base is not None and provider in OPENAI_COMPATIBLE)
    if provider == ENGINE_PROVIDER or direct:
        from gateway.backends.openai_http import OpenAIHTTPBackend

        if params.api_base is None:
            raise ValueError(f"{entry.model_name}: transport 'direct' needs litellm_params.api_base")
        return OpenAIHTTPBackend(params.api_base, params.model.split("/", 1)[-1], params.api_key,
                                 accepts_session=provider == ENGINE_PROVIDER,
                                 send_priority=provider == "hosted_vllm",
                                 connect_timeout_s=settings.server.connect_timeout_s,
                                 rank_horizon_s=settings.ranking.horizon_s,
                                 provider_model=params.model if provider in OPENAI_PROVIDERS else None,
                                 serves_embeddings=entry.serves_embeddings)
    from gateway.backends.litellm_backend import LitellmBackend

    extra = params.model_dump(exclude={"model_dir", "num_blocks", "max_num_seqs", "max_model_len", "policy",
                                       "device", "tiny_model", "transport", "speculative_config", "host_kv_gib",
                                       "kv_cache_dtype", "lora_modules", "calculate_kv_scales", "quantization",
                                       "tensor_parallel_size", "reasoning_effort_budgets", "disk_kv_path",
                                       "disk_kv_gib", "image_limits", "dequantize_mxfp4",
                                       "disable_hybrid_kv_cache_manager", "hf_overrides", "enable_prompt_embeds", "rpm", "tpm"},
                              exclude_none=True)
    return LitellmBackend(extra, vllm_priority=provider == "hosted_vllm", rank_horizon_s=settings.ranking.horizon_s)


def _overridden(entry: ModelEntry, model_dir: Path) -> Path:
    """The folder with `hf_overrides` (vLLM's --hf-overrides: engine/hf_overrides.py) applied, where set."""
    try:
        return with_hf_overrides(model_dir, entry.litellm_params.hf_overrides)
    except ValueError as exc:
        raise ConfigError(f"model {entry.model_name}: {exc}") from exc


def _classifier(entry: ModelEntry, model_dir: Path) -> ClassifierHead | None:
    try:
        return classifier_head(model_dir)
    except ValueError as exc:  # a head it cannot build
        raise ConfigError(f"model {entry.model_name}: {exc}") from exc


def _cross_encoder_backend(entry: ModelEntry, model_dir: Path) -> Backend:
    """A reranker's folder in this process: a cross-encoder (engine/cross_encoder.py), or a decoder classifier of
    one label on an engine of this process's (engine/decoder_scorer.py); `tiny_model:` builds a tiny random BERT
    one where the folder is absent (tests)."""
    from engine.cross_encoder import CrossEncoder
    from gateway.backends.cross_encoder import CrossEncoderBackend

    params = entry.litellm_params
    classifies = entry.model_info.mode == "classify"
    if (head := _classifier(entry, model_dir)) is not None:
        from engine.build import build_engine
        from engine.decoder_scorer import DecoderScorer

        if head.num_labels != 1 and not classifies:
            raise ConfigError(f"model {entry.model_name}: {model_dir} classifies into {head.num_labels} labels; a "
                              "reranker has one")
        try:
            engine = build_engine(model_dir, device=params.device, max_num_seqs=params.max_num_seqs,
                                  num_blocks=params.num_blocks, max_model_len=params.max_model_len,
                                  kv_cache_dtype=params.kv_cache_dtype, quantization=params.quantization)
        except ValueError as exc:  # a checkpoint it cannot serve, a head's token not in the vocabulary
            raise ConfigError(f"model {entry.model_name}: {exc}") from exc
        return CrossEncoderBackend(entry.model_name, DecoderScorer(engine, model_dir, head), classifies)
    if classifies:
        raise ConfigError(f"model {entry.model_name}: model_info.mode: classify on pitstop-local/ needs a decoder "
                          f"classifier's folder (a *ForSequenceClassification); {model_dir} is not one")
    if (tiny := params.tiny_model) is not None and not (model_dir / "config.json").exists():
        from engine.tiny_cross_encoder import make_tiny_cross_encoder

        log.info("building tiny cross-encoder %s into %s", entry.model_name, model_dir)
        make_tiny_cross_encoder(model_dir, "bert", layers=tiny.layers, hidden=tiny.hidden, seed=tiny.seed)
    if cross_encoder_config(model_dir) is None:
        raise ConfigError(f"model {entry.model_name}: model_info.mode: rerank on pitstop-local/ needs a cross-encoder "
                          f"folder (a *ForSequenceClassification with one label); {model_dir} is not one")
    fields = type(params).model_fields
    if set_keys := [name for name in SCORER_ENGINE_KEYS if getattr(params, name) != fields[name].default]:
        raise ConfigError(f"model {entry.model_name}: a cross-encoder has no KV cache: {', '.join(set_keys)} do not "
                          "apply (they size a decoder scorer's engine)")
    return CrossEncoderBackend(entry.model_name, CrossEncoder(model_dir, params.device))


def _image_limits(spec: ImageLimitsSpec | None, outbound: Callable[[], OutboundPolicy]) -> ImageLimits:
    """The engine's image limits; its fetches follow the gateway's `outbound:` (one setting governs every URL a
    client hands this process)."""
    spec = spec or ImageLimitsSpec()
    domains = spec.allowed_media_domains
    return ImageLimits(spec.max_images, spec.max_bytes, spec.fetch_timeout_s,
                       None if domains is None else frozenset(domains), url_policy=outbound)


def _rules_of(settings: Settings) -> Callable[[], OutboundPolicy]:
    policy = OutboundPolicy.of(settings.outbound)
    return lambda: policy


def add_deployment(pool: DeploymentPool, entry: ModelEntry, backend: Backend, settings: Settings) -> Deployment:
    deployment = new_deployment(pool, entry, backend, settings)
    pool.add(deployment)
    return deployment


def new_deployment(pool: DeploymentPool, entry: ModelEntry, backend: Backend, settings: Settings) -> Deployment:
    """A deployment of `entry` on `backend`, named and with its queue and rpm / tpm window, not yet in the pool."""
    return Deployment(pool.issue_name(entry.model_name), entry.model_name, backend, entry.model_info,
                      entry.litellm_params.model,
                      admission=make_admission(entry.model_info.max_concurrency, settings.ranking.admission_policy,
                                               entry.model_info.max_queue),
                      window=make_window(entry.litellm_params.rpm, entry.litellm_params.tpm, pool.clock,
                                         shared_id(entry, pool), synced=settings.redis_url is not None),
                      entry_key=entry_key(entry, settings), image_tokens=_image_tokens(entry, settings))


def _image_tokens(entry: ModelEntry, settings: Settings) -> ImageTokens:
    """What an image counts for on the deployment (gateway/image_tokens.py): an engine in this process reads its
    checkpoint's config, built by now."""
    params = entry.litellm_params
    model_dir = settings.resolve_path(params.model_dir) if params.provider == LOCAL_PROVIDER and params.model_dir \
        else None
    return image_tokens_for(params.model, entry.model_info.image_token_estimate, model_dir)


def entry_key(entry: ModelEntry, settings: Settings) -> str:
    """What a deployment is built from, as one string: its entry, and a LoRA adapter's base entry too (the
    adapter is served by the base's engine, which a changed base entry replaces)."""
    parts = [entry.model_dump_json()]
    if (base := entry.litellm_params._adapter_of) is not None:
        parts.append(settings.model_list[base].model_dump_json())
    return "\n".join(parts)


_starting: set[asyncio.Task[None]] = set()  # backends of adopted wildcard models, starting beside serving


def adopt_wildcard(pool: DeploymentPool, settings: Settings, entry: ModelEntry) -> None:
    """A model a wildcard matched (gateway/wildcards.py) becomes a deployment, started beside its first
    request (what a start does is warm caches; a backend serves before it)."""
    deployment = add_deployment(pool, entry, make_backend(entry, settings), settings)
    try:
        task = asyncio.get_running_loop().create_task(deployment.backend.start())
    except RuntimeError:  # no loop (a CLI command): it starts on its first call
        return
    _starting.add(task)
    task.add_done_callback(_starting.discard)


def adapter_backend(base: Backend, entry: ModelEntry) -> Backend:
    """A LoRA adapter of an in-process engine (`lora_modules`): the base entry's engine, asked for it."""
    from gateway.backends.local import LocalEngineBackend

    assert isinstance(base, LocalEngineBackend), "lora_modules are for engines in this process"
    return LocalEngineBackend(base.engine, entry.model_name, lora=entry.model_name,
                              serves_embeddings=entry.serves_embeddings, **base.parsers)
