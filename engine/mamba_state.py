"""A Mamba-2 hybrid's per-sequence state pool: one slot a running sequence, holding its conv window
[conv_dim, d_conv - 1] and SSM state [heads, head_dim, d_state] in every mixer layer (vLLM v1's MambaSpec:
one state "block" a request, beside the attention layers' paged KV).

A slot is taken when a sequence's first tokens are computed (admission) and zeroed then; it is given back
when the sequence finishes or is aborted (FINISHED) or preempted (its preemption count moved), seen at the next
step: preemption recomputes from the prompt, so the state starts again from zero. The runner has as many slots
as the engine may run sequences (LLMEngine caps max_num_seqs at `num_slots`) and the memory they take comes out
of the KV budget (TorchModelRunner.num_blocks_for_budget), so running sequences are bounded by both.

A hybrid cannot rebuild a state from cached KV blocks, so the engine turns the prefix cache off for these
models (`hybrid_engine_config`, logged): a sequence always starts at token 0 and never computes a token twice
in a way a cache hit would skip. A sequence that arrives with computed tokens and no slot is a bug, refused
rather than answered from a zero state. Speculative decoding (its rejected drafts would have advanced the
state) and host or disk KV tiers (they hold prefix-cache blocks) are refused too."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.model.mamba_config import HybridSpec, UnsupportedHybrid, refuse_unsupported_hybrid
from engine.sequence import SequenceStatus

if TYPE_CHECKING:
    from engine.batch import ScheduledBatch
    from engine.config import EngineConfig
    from engine.model.config import ModelConfig
    from engine.sequence import Sequence

logger = logging.getLogger(__name__)

DEFAULT_STATE_SLOTS = 64  # build_engine's max_num_seqs default


@dataclass
class MambaStep:
    """Which slot each of a step's rows reads and writes: single-token rows batched, longer rows one by one."""

    decode_rows: torch.Tensor | None  # [D] batch-token index of each single-token row
    decode_slots: torch.Tensor | None  # [D] their slots
    decode_only: bool  # every row is one token, in batch order
    prefills: list[tuple[int, int, int]]  # (first batch token, end, slot) of each longer row


@dataclass
class HybridCaches:
    """What a hybrid model's layers read and write in a step: the attention layers' KV (one slot each, in layer
    order) and the mixers' states (one slot each, in layer order)."""

    kv: torch.Tensor  # [attention layers, 2, blocks, block_size, kv_heads, head_dim]
    conv: torch.Tensor  # [mixer layers, slots, conv_dim, d_conv - 1]
    ssm: torch.Tensor  # [mixer layers, slots, heads, head_dim, d_state]
    step: MambaStep


@dataclass
class _Held:
    seq: Sequence
    slot: int
    preemptions: int  # the sequence's count when it took the slot


class MambaStatePool:
    def __init__(self, spec: HybridSpec, num_slots: int, dtype: torch.dtype, device: torch.device) -> None:
        if num_slots < 1:
            raise ValueError("a Mamba-2 hybrid needs at least one state slot")
        layers = len(spec.mamba_layers)
        self.num_slots = num_slots
        self.conv = torch.zeros(layers, num_slots, *spec.conv_state_shape, dtype=dtype, device=device)
        self.ssm = torch.zeros(layers, num_slots, *spec.ssm_state_shape, dtype=dtype, device=device)
        self.device = device
        self._free = list(range(num_slots - 1, -1, -1))
        self._held: dict[str, _Held] = {}
        self._step: MambaStep | None = None

    @property
    def num_free_slots(self) -> int:
        """Slots no running sequence holds (those of stopped sequences given back first)."""
        self._release_stopped()
        return len(self._free)

    def slot_of(self, request_id: str) -> int | None:
        held = self._held.get(request_id)
        return None if held is None else held.slot

    def begin_step(self, batch: ScheduledBatch) -> None:
        """Gives back the slots of sequences that stopped, takes (and zeroes) one for each sequence starting,
        and lays out the step's rows (`caches` hands them to the model)."""
        if batch.has_drafts:
            raise UnsupportedHybrid("draft tokens on a Mamba-2 hybrid: rejected drafts would stay in its state")
        self._release_stopped()
        fresh: list[int] = []
        slots: list[int] = []
        for seq in batch.seqs:
            held = self._held.get(seq.request_id)
            if held is not None and held.seq is not seq:  # an id used again by a new sequence
                self._give_back(seq.request_id)
                held = None
            if seq.num_computed_tokens == 0:
                if held is None:
                    held = self._take(seq)
                fresh.append(held.slot)
            elif held is None:
                raise RuntimeError(f"{seq.request_id}: {seq.num_computed_tokens} tokens computed but no Mamba state "
                                   "slot holds them (a hybrid model cannot take a prefix from cached KV)")
            slots.append(held.slot)
        if fresh:
            index = torch.tensor(fresh, device=self.device)
            self.conv.index_fill_(1, index, 0)
            self.ssm.index_fill_(1, index, 0)
        self._step = self._layout(batch.num_new_tokens, slots)

    def caches(self, kv: torch.Tensor) -> HybridCaches:
        assert self._step is not None, "begin_step() first"
        return HybridCaches(kv, self.conv, self.ssm, self._step)

    def _layout(self, lens: list[int], slots: list[int]) -> MambaStep:
        starts = [end - n for end, n in zip(accumulate(lens), lens, strict=True)]
        single = [i for i, n in enumerate(lens) if n == 1]
        decode_rows = decode_slots = None
        if single:
            decode_rows = torch.tensor([starts[i] for i in single], device=self.device)
            decode_slots = torch.tensor([slots[i] for i in single], device=self.device)
        prefills = [(starts[i], starts[i] + n, slots[i]) for i, n in enumerate(lens) if n > 1]
        return MambaStep(decode_rows, decode_slots, not prefills, prefills)

    def _release_stopped(self) -> None:
        for request_id, held in list(self._held.items()):
            if held.seq.status is SequenceStatus.FINISHED or held.seq.num_preemptions != held.preemptions:
                self._give_back(request_id)

    def _take(self, seq: Sequence) -> _Held:
        if not self._free:
            raise RuntimeError(f"no free Mamba state slot for {seq.request_id} ({self.num_slots} slots, all held)")
        held = self._held[seq.request_id] = _Held(seq, self._free.pop(), seq.num_preemptions)
        return held

    def _give_back(self, request_id: str) -> None:
        self._free.append(self._held.pop(request_id).slot)


def hybrid_engine_config(config: EngineConfig, runner: object) -> EngineConfig:
    """The engine's config for a runner with a state pool: the prefix cache off (a hybrid cannot resume from
    cached KV; logged), at most as many running sequences as state slots; speculative decoding refused."""
    pool: MambaStatePool | None = getattr(runner, "mamba_states", None)
    if pool is None:
        return config
    if config.speculative is not None:
        raise UnsupportedHybrid("speculative decoding is not supported on a Mamba-2 hybrid (a rejected draft "
                                "would stay in the recurrent state); serve it without a speculative config")
    if config.enable_prefix_caching:
        logger.info("prefix caching is off for this Mamba-2 hybrid model: its mixer state cannot be rebuilt "
                    "from cached KV blocks, so every prompt is computed from its first token")
    if config.max_num_seqs > pool.num_slots:
        logger.info("max_num_seqs %d capped at the %d Mamba state slots", config.max_num_seqs, pool.num_slots)
    return replace(config, enable_prefix_caching=False, max_num_seqs=min(config.max_num_seqs, pool.num_slots))


def state_pool(config: ModelConfig, num_slots: int, dtype: torch.dtype, device: torch.device, kv_cache_dtype: str,
               tensor_parallel_size: int, quantized: bool, kv_tiers: bool) -> MambaStatePool | None:
    """A hybrid model's state pool of `num_slots` slots, after refusing what it does not serve; None for a
    model without mixers."""
    refuse_unsupported_hybrid(config.hybrid, kv_cache_dtype, tensor_parallel_size, quantized, kv_tiers)
    return None if config.hybrid is None else MambaStatePool(config.hybrid, num_slots, dtype, device)


def state_pool_bytes(config: ModelConfig, num_slots: int, dtype: torch.dtype) -> int:
    """What `num_slots` state slots take: out of the KV cache's byte budget (engine/build.py)."""
    return 0 if config.hybrid is None else num_slots * config.hybrid.state_bytes(dtype.itemsize)


def refuse_hybrid_lora(config: ModelConfig) -> None:
    from engine.model.lora import LoRAError

    if config.hybrid is not None:
        raise LoRAError(f"{config.model_type}: LoRA adapters on a Mamba-2 hybrid are not supported")


def hybrid_state_bytes(model_dir: str | Path, num_slots: int, device: str | None) -> int:
    """The state pool's bytes for a model folder served with `num_slots` running sequences (0 for a model
    without mixers): build_engine takes them out of the KV byte budget."""
    from engine.model.config import ModelConfig
    from engine.torch_runner import default_dtype

    config = ModelConfig.from_dir(model_dir)
    dtype = default_dtype(config, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    return state_pool_bytes(config, num_slots, dtype)
