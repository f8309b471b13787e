"""Building an engine instance to serve: a real model (tokenizer and torch runner from a model folder)
or a simulated GPU (a step-time profile on a wall clock), its KV cache, host tier and disk tier sized in
blocks or bytes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.async_engine import AsyncEngine, TokenizerLike
from engine.audio_inputs import is_whisper
from engine.config import ImageLimits, SpeculativeConfig
from engine.llm_engine import LLMEngine


def build_engine(model_dir: str | Path | None = None, sim_profile: str | Path | None = None, *,
                 tokenizer: TokenizerLike | None = None, num_blocks: int | None = None,
                 kv_cache_memory_bytes: int | None = None, block_size: int = 16,
                 max_model_len: int | None = None, max_num_seqs: int = 64, policy: str = "fcfs",
                 pin_budget_fraction: float = 0.5, device: str | None = None,
                 speculative: SpeculativeConfig | None = None, host_kv_memory_bytes: int = 0,
                 kv_cache_dtype: str = "auto", calculate_kv_scales: bool = False,
                 quantization: str | None = None, tensor_parallel_size: int = 1,
                 reasoning_effort_budgets: dict[str, int] | None = None, lora_modules: dict[str, str] | None = None,
                 max_loras: int = 8, max_lora_rank: int = 64, disk_kv_path: str | Path | None = None,
                 disk_kv_bytes: int = 0, image_limits: ImageLimits | None = None,
                 dequantize_mxfp4: bool = False, hybrid_kv_cache: bool = True,
                 enable_prompt_embeds: bool = False) -> AsyncEngine:
    """An AsyncEngine over a real model (tokenizer + TorchModelRunner from `model_dir`) or over a
    simulated runner on a wall clock (`sim_profile`, a step-time profile JSON), so served sim
    steps take their modelled time. KV capacity: `num_blocks`, else `kv_cache_memory_bytes`, else a
    default (1024 blocks for a model, the profile's own capacity for a simulation). `speculative`:
    n-gram speculative decoding (a simulation checks drafts against its placeholder tokens), or a draft
    model's, whose KV cache (as many blocks as the target's) `kv_cache_memory_bytes` holds too.
    `host_kv_memory_bytes`: host memory for KV blocks the GPU evicts (engine/host_cache.py); 0: none.
    `disk_kv_path` and `disk_kv_bytes`: a folder and a file size for the disk tier behind it, which takes what
    the host tier evicts (the GPU, without one) and keeps it across restarts (engine/disk_cache.py).
    `kv_cache_dtype`: "auto" (the model's dtype) or an fp8 format (engine/config.py KV_CACHE_DTYPES): byte
    budgets then hold twice the blocks, and a simulation prices the smaller KV; `calculate_kv_scales`: its
    scales measured on the first step rather than read from the checkpoint. `quantization`: "int8" or
    "fp8" W8A8 projections, or "int4" W4A16 ones (engine/model/quant_config.py; a quantized checkpoint's
    own is used without it), which a simulation prices as one byte a weight (int4: half a byte and its
    scales); `dequantize_mxfp4`: gpt-oss's MXFP4 experts dequantized to the model's dtype at load rather
    than kept packed (engine/model/mxfp4.py). `hybrid_kv_cache`: a model mixing sliding and full layers keeps
    its sliding layers' KV in groups of their own that release what left the window (engine/kv_groups.py);
    not with a draft model or tensor parallelism, which keep every block (a host or disk tier keeps a group's
    block a slot: engine/group_tiers.py).
    `tensor_parallel_size`: the model sharded over that many ranks (engine/model/parallel.py; byte budgets are per rank), a roofline simulation priced
    on that many GPUs. `reasoning_effort_budgets`: thinking budgets for some `reasoning_effort` values, over
    vLLM's defaults (engine/thinking_budget.py). `lora_modules`: LoRA
    adapters to serve from the start, name -> PEFT folder (engine/model/lora.py), at most `max_loras`
    at once (more may be loaded at run time up to that), each of rank at most `max_lora_rank`. `image_limits`: a
    vision model's image inputs (engine/config.py ImageLimits). `enable_prompt_embeds`: completions may send
    `prompt_embeds` (engine/prompt_embeds.py)."""
    from engine.clock import WallClock
    from engine.config import EngineConfig
    from engine.policy import make_policy
    from engine.thinking_budget import DEFAULT_EFFORT_BUDGETS

    if (model_dir is None) == (sim_profile is None):
        raise ValueError("pass exactly one of model_dir and sim_profile")
    if num_blocks is not None and kv_cache_memory_bytes is not None:
        raise ValueError("pass at most one of num_blocks and kv_cache_memory_bytes")
    if (disk_kv_path is None) != (not disk_kv_bytes):
        raise ValueError("a disk KV tier needs both a folder (disk_kv_path) and a size (disk_kv_bytes)")
    clock = WallClock()
    if model_dir is not None and is_whisper(model_dir):  # an encoder-decoder: engine/whisper_runner.py
        from engine.tokenizer import Tokenizer
        from engine.whisper_runner import whisper_runner

        runner = whisper_runner(model_dir, num_blocks, kv_cache_memory_bytes, block_size, device, {
            "speculative decoding": speculative is not None, "a host KV tier": bool(host_kv_memory_bytes),
            "a disk KV tier": bool(disk_kv_bytes), "an fp8 KV cache": kv_cache_dtype != "auto",
            "quantization": quantization is not None, "tensor parallelism": tensor_parallel_size > 1,
            "LoRA adapters": bool(lora_modules), "prompt embeddings": enable_prompt_embeds})
        num_blocks, num_host_blocks, num_disk_blocks = runner.num_blocks, 0, 0
        tokenizer = tokenizer or Tokenizer(model_dir)
        context_len, vocab_size = runner.max_model_len, runner.config.vocab_size
    elif model_dir is not None:
        from engine.mamba_state import hybrid_state_bytes
        from engine.model.config import ModelConfig
        from engine.tokenizer import Tokenizer
        from engine.torch_runner import TorchModelRunner

        if speculative is not None and speculative.model is not None and ModelConfig.from_dir(model_dir).mrope_section:
            raise ValueError("a draft model or EAGLE head is not supported for an M-RoPE model (Qwen2.5-VL): it "
                             "would need the target's 3-row positions; speculate with n-gram drafts instead")
        draft = speculative.model if speculative is not None else None  # a draft model's or an EAGLE head's folder
        hybrid_kv_cache = hybrid_kv_cache and draft is None  # the draft's cache has as many blocks, whole-model
        state_bytes = hybrid_state_bytes(model_dir, max_num_seqs, device)  # Mamba-2 state slots (engine/mamba_state.py)
        if num_blocks is None:
            num_blocks = 1024 if kv_cache_memory_bytes is None else TorchModelRunner.num_blocks_for_budget(
                model_dir, kv_cache_memory_bytes - state_bytes, block_size, device, kv_cache_dtype=kv_cache_dtype,
                tensor_parallel_size=tensor_parallel_size, draft_dir=draft, hybrid_kv_cache=hybrid_kv_cache)
        _check_num_blocks(num_blocks)
        num_host_blocks, num_disk_blocks = (
            TorchModelRunner.num_blocks_for_budget(model_dir, budget, block_size, device, kv_cache_dtype=kv_cache_dtype,  # a
                                                   tensor_parallel_size=tensor_parallel_size,  # group's block a slot
                                                   hybrid_kv_cache=hybrid_kv_cache)
            for budget in (host_kv_memory_bytes, disk_kv_bytes))
        runner = TorchModelRunner(model_dir, num_blocks, block_size, device=device, num_host_blocks=num_host_blocks,
                                  kv_cache_dtype=kv_cache_dtype, calculate_kv_scales=calculate_kv_scales,
                                  quantization=quantization, tensor_parallel_size=tensor_parallel_size,
                                  disk_kv_path=disk_kv_path, num_disk_blocks=num_disk_blocks,
                                  dequantize_mxfp4=dequantize_mxfp4, hybrid_kv_cache=hybrid_kv_cache,
                                  num_state_slots=max_num_seqs)
        tokenizer = tokenizer or Tokenizer(model_dir)
        context_len = runner.max_model_len
        vocab_size = runner.config.vocab_size
    else:
        from engine.byte_tokenizer import ByteTokenizer
        from engine.sim_runner import SimulatedRunner
        from engine.step_time import load_profile

        step_time = with_tensor_parallel(load_profile(sim_profile), tensor_parallel_size)
        step_time = with_kv_cache_dtype(with_quantization(step_time, quantization), kv_cache_dtype)
        num_blocks = _sim_num_blocks(step_time, num_blocks, kv_cache_memory_bytes, block_size)
        num_host_blocks, num_disk_blocks = (_sim_blocks_for_bytes(step_time, budget, block_size) if budget else 0
                                            for budget in (host_kv_memory_bytes, disk_kv_bytes))
        if tokenizer is None:
            # ASCII only: random placeholder tokens then always decode to valid text.
            tokenizer, vocab_size = ByteTokenizer(), 128
        else:
            vocab_size = getattr(tokenizer, "vocab_size", 32000)
        runner = SimulatedRunner(step_time, clock, vocab_size=vocab_size, eos_token_ids=tokenizer.eos_token_ids,
                                 num_host_blocks=num_host_blocks, kv_cache_dtype=kv_cache_dtype,
                                 num_disk_blocks=num_disk_blocks, disk_kv_path=disk_kv_path, block_size=block_size)
        context_len = 1 << 30  # a simulation has no position limit of its own
    if disk_kv_bytes and not num_disk_blocks:
        raise ValueError(f"a disk KV tier of {disk_kv_bytes} bytes holds no block of this model's KV")
    config = EngineConfig(block_size=block_size, num_blocks=num_blocks,
                          max_model_len=min(max_model_len or context_len, context_len),
                          max_num_seqs=max_num_seqs, max_num_batched_tokens=max(2048, max_num_seqs),
                          pin_budget_fraction=pin_budget_fraction, speculative=speculative,
                          num_host_blocks=num_host_blocks, num_disk_blocks=num_disk_blocks,
                          max_loras=max(max_loras, len(lora_modules or {})),
                          max_lora_rank=max_lora_rank, image_limits=image_limits or ImageLimits(),
                          enable_prompt_embeds=enable_prompt_embeds,
                          reasoning_effort_budgets={**DEFAULT_EFFORT_BUDGETS, **(reasoning_effort_budgets or {})})
    try:
        engine = LLMEngine(config, runner, clock, make_policy(policy), tokenizer=tokenizer)
    except Exception:
        getattr(runner, "close", lambda: None)()  # its disk tier's folder released, its workers stopped
        raise
    for name, path in (lora_modules or {}).items():
        engine.add_lora(name, str(path))
    return AsyncEngine(engine, vocab_size=vocab_size)


def with_kv_cache_dtype(step_time: object, kv_cache_dtype: str) -> object:
    """A simulation's step-time model for a KV cache stored as `kv_cache_dtype`: a roofline re-derives its
    KV's size and traffic; a measured profile serves only the KV it was measured with."""
    from engine.config import kv_element_bytes
    from engine.roofline import RooflineStepTime

    if isinstance(step_time, RooflineStepTime):
        return step_time.with_kv_cache_dtype(kv_cache_dtype)
    model = getattr(step_time, "model", None)
    measured = model.get("kv_bytes") if isinstance(model, dict) else None
    if kv_cache_dtype != "auto" and measured != kv_element_bytes(kv_cache_dtype, measured or 2):
        raise ValueError(f"this step-time profile was measured with {measured or 'an unrecorded number of'} "
                         f"byte(s) a KV element, not {kv_cache_dtype}: run `pitstop engine profile "
                         f"--kv-cache-dtype {kv_cache_dtype}`, or use a roofline profile")
    return step_time


def with_tensor_parallel(step_time: object, tensor_parallel_size: int) -> object:
    """A simulation on `tensor_parallel_size` GPUs: a roofline's own count replaced; a measured profile only
    as measured (1 by default: the profile's own)."""
    from engine.roofline import RooflineStepTime

    if tensor_parallel_size == 1:
        return step_time
    if isinstance(step_time, RooflineStepTime):
        return replace(step_time, tensor_parallel=tensor_parallel_size)
    raise ValueError("a measured step-time profile prices the GPUs it was measured on: use a roofline profile "
                     "(`pitstop engine roofline --tensor-parallel N`) to simulate tensor parallelism")


def with_quantization(step_time: object, quantization: str | None) -> object:
    """A simulation's step-time model for an engine quantized as `quantization`: a roofline re-derives its
    weights' bytes and FLOP/s; a measured profile serves only the quantization it was measured with."""
    from engine.roofline import RooflineStepTime

    if isinstance(step_time, RooflineStepTime):
        return step_time.with_quantization(quantization)
    model = getattr(step_time, "model", None)
    measured = model.get("quantization") if isinstance(model, dict) else None
    if quantization is not None and measured != quantization:
        raise ValueError(f"this step-time profile was measured {f'with {measured}' if measured else 'unquantized'}, "
                         f"not {quantization}: run `pitstop engine profile --quantization {quantization}`, "
                         "or use a roofline profile")
    return step_time


def _check_num_blocks(num_blocks: int) -> None:
    if num_blocks < 1:
        raise ValueError(f"the KV cache must hold at least one block (got {num_blocks})")


def _sim_num_blocks(step_time: object, num_blocks: int | None, kv_cache_memory_bytes: int | None,
                    block_size: int) -> int:
    if num_blocks is None and kv_cache_memory_bytes is not None:
        num_blocks = _sim_blocks_for_bytes(step_time, kv_cache_memory_bytes, block_size)
    if num_blocks is None:
        from engine.simulate import _default_num_blocks  # the simulator's rule: the profile's capacity

        num_blocks = _default_num_blocks(step_time, block_size)
    _check_num_blocks(num_blocks)
    return num_blocks


def _sim_blocks_for_bytes(step_time: object, memory_bytes: int, block_size: int) -> int:
    """Blocks in `memory_bytes` of the profiled model's KV (engine/sim_runner.py model_kv_bytes_per_token)."""
    from engine.sim_runner import model_kv_bytes_per_token

    per_token = model_kv_bytes_per_token(step_time)  # type: ignore[arg-type]
    if per_token is None:
        raise ValueError("this profile does not say how large a KV token is: size its KV in blocks")
    return memory_bytes // (per_token * block_size)
