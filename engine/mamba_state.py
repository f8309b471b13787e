"""A Mamba-2 hybrid's per-sequence state pool: one slot a running sequence, holding its conv window
[conv_dim, d_conv - 1] and SSM state [heads, head_dim, d_state] in every mixer layer (vLLM v1's MambaSpec:
one state "block" a request, beside the attention layers' paged KV).

A slot is taken when a sequence's first tokens are computed (admission) and zeroed then; it is given back
when the sequence finishes or is aborted (FINISHED) or preempted (its preemption count moved), seen at the next
step: preemption recomputes from the prompt, so the state starts again from zero. The runner has as many slots
as the engine may run sequences (LLMEngine caps max_num_seqs at `num_slots`) and the memory they take comes out
of the KV budget (`hybrid_state_bytes`, engine/build.py), so running sequences are bounded by both.

A hybrid cannot rebuild a state from cached KV blocks, so the engine takes a prefix-cache hit only where an
agent session's kept snapshot holds exactly that prefix (engine/mamba_sessions.py: `resumable_blocks` is the block
manager's `prefix_limit`; logged by `hybrid_engine_config`). A sequence that arrives with computed tokens and no
state is a bug, refused rather than answered from a zero state. Speculative decoding (its rejected drafts would
have advanced the state) and host or disk KV tiers (they hold prefix-cache blocks) are refused too."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.mamba_sessions import SessionStates
from engine.model.mamba_config import HybridSpec, UnsupportedHybrid, refuse_unsupported_hybrid
from engine.sequence import SequenceStatus

if TYPE_CHECKING:
    from engine.batch import ScheduledBatch
    from engine.config import EngineConfig
    from engine.model.config import ModelConfig
    from engine.sequence import Sequence

logger = logging.getLogger(__name__)

DEFAULT_STATE_SLOTS = 64  # build_engine's max_num_seqs default (and as many session-snapshot slots)


@dataclass
class MambaStep:
    """Which slot each of a step's rows reads and writes: single-token rows batched, longer rows one by one."""

    decode_rows: torch.Tensor | None  # [D] batch-token index of each single-token row
    decode_slots: torch.Tensor | None  # [D] their slots
    decode_only: bool  # every row is one token, in batch order
    # (first batch token, end, slot, snapshot slot or -1) of each longer row, cut where a session's state is kept
    prefills: list[tuple[int, int, int, int]]


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
    boundary: int | None = None  # a session's: the slot its state at its last block boundary is copied into
    boundary_tokens: int = 0  # the tokens that copy holds


class MambaStatePool:
    """`num_slots` slots for running sequences and `num_session_slots` for agent sessions' snapshots
    (engine/mamba_sessions.py), in one pair of tensors."""

    def __init__(self, spec: HybridSpec, num_slots: int, dtype: torch.dtype, device: torch.device,
                 num_session_slots: int = 0) -> None:
        if num_slots < 1:
            raise ValueError("a Mamba-2 hybrid needs at least one state slot")
        layers, total = len(spec.mamba_layers), num_slots + num_session_slots
        self.num_slots = num_slots
        self.conv = torch.zeros(layers, total, *spec.conv_state_shape, dtype=dtype, device=device)
        self.ssm = torch.zeros(layers, total, *spec.ssm_state_shape, dtype=dtype, device=device)
        self.device = device
        self.block_size = 16  # the engine's (hybrid_engine_config), where session snapshots are taken
        self.sessions = SessionStates(range(num_slots, total))
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

    def resumable_blocks(self, seq: Sequence, num_hits: int) -> int:
        """Of the `num_hits` cached blocks a waiting sequence's prompt starts with, how many it may take (the
        block manager's `prefix_limit`): a session snapshot's, where one holds that prefix's state; else none."""
        self._release_stopped()  # a turn that just finished keeps its snapshot here
        return self.sessions.promise(seq, num_hits, self.block_size)

    def begin_step(self, batch: ScheduledBatch) -> None:
        """Gives back the slots of sequences that stopped (keeping a finished session turn's snapshot), takes one
        for each sequence starting (zeroed, or a session snapshot's copy where it resumes), and lays out the
        step's rows (`caches` hands them to the model)."""
        if batch.has_drafts:
            raise UnsupportedHybrid("draft tokens on a Mamba-2 hybrid: rejected drafts would stay in its state")
        self._release_stopped()
        fresh: list[int] = []
        helds: list[_Held] = []
        for seq in batch.seqs:
            held = self._held.get(seq.request_id)
            if held is not None and held.seq is not seq:  # an id used again by a new sequence
                self._give_back(seq.request_id)
                held = None
            if seq.num_computed_tokens == 0:
                held = held or self._take(seq)
                held.boundary_tokens = 0
                fresh.append(held.slot)
            elif held is None:
                held = self._resume(seq)
            helds.append(held)
        if fresh:
            index = torch.tensor(fresh, device=self.device)
            self.conv.index_fill_(1, index, 0)
            self.ssm.index_fill_(1, index, 0)
        for held in helds:  # after every resume: taking a session slot may evict a kept snapshot
            if held.seq.session_id is not None and held.boundary is None:
                held.boundary = self.sessions.take_slot()
            if held.boundary is not None and held.seq.num_computed_tokens % self.block_size == 0:
                self._snapshot(held, held.seq.num_computed_tokens)  # the state at a boundary, before this step
        self._step = self._layout(batch.num_new_tokens, helds)

    def caches(self, kv: torch.Tensor) -> HybridCaches:
        assert self._step is not None, "begin_step() first"
        return HybridCaches(kv, self.conv, self.ssm, self._step)

    def _layout(self, lens: list[int], helds: list[_Held]) -> MambaStep:
        """A session's prefill row that crosses a block boundary is cut there: the mixer copies its state at the
        cut into the sequence's boundary slot."""
        starts = [end - n for end, n in zip(accumulate(lens), lens, strict=True)]
        single = [i for i, n in enumerate(lens) if n == 1]
        decode_rows = decode_slots = None
        if single:
            decode_rows = torch.tensor([starts[i] for i in single], device=self.device)
            decode_slots = torch.tensor([helds[i].slot for i in single], device=self.device)
        prefills: list[tuple[int, int, int, int]] = []
        for i, n in enumerate(lens):
            if n == 1:
                continue
            held, start = helds[i], starts[i]
            computed = held.seq.num_computed_tokens
            boundary = (computed + n) // self.block_size * self.block_size
            if held.boundary is None or boundary <= max(computed, held.boundary_tokens):
                prefills.append((start, start + n, held.slot, -1))
                continue
            cut = start + boundary - computed
            prefills.append((start, cut, held.slot, held.boundary))
            if cut < start + n:
                prefills.append((cut, start + n, held.slot, -1))
            held.boundary_tokens = boundary
        return MambaStep(decode_rows, decode_slots, not prefills, prefills)

    def _snapshot(self, held: _Held, num_tokens: int) -> None:
        if held.boundary is not None and num_tokens > held.boundary_tokens:
            self._copy(held.slot, held.boundary)
            held.boundary_tokens = num_tokens

    def _copy(self, source: int, target: int) -> None:
        self.conv[:, target] = self.conv[:, source]
        self.ssm[:, target] = self.ssm[:, source]

    def _resume(self, seq: Sequence) -> _Held:
        """A session's next turn from its kept snapshot (what `resumable_blocks` promised it)."""
        kept = self.sessions.claim(seq)
        if kept is None:
            raise RuntimeError(f"{seq.request_id}: {seq.num_computed_tokens} tokens computed but no Mamba state "
                               "slot holds them (a hybrid model cannot take a prefix from cached KV)")
        held = self._take(seq)
        self._copy(kept.slot, held.slot)
        held.boundary, held.boundary_tokens = kept.slot, kept.num_tokens  # its snapshots go on in that slot
        return held

    def _release_stopped(self) -> None:
        for request_id, held in list(self._held.items()):
            seq = held.seq
            if seq.status is SequenceStatus.FINISHED or seq.num_preemptions != held.preemptions:
                # A finished turn's last boundary snapshot stays with its session (the blocks its pin holds end at
                # or past it: a step's own last block is not registered, so no snapshot is taken after one).
                kept = seq.status is SequenceStatus.FINISHED and seq.finish_reason != "abort"
                if kept and held.boundary is not None and held.boundary_tokens and seq.session_id is not None:
                    self.sessions.keep(seq.session_id, held.boundary, seq.token_ids[: held.boundary_tokens])
                    held.boundary = None
                self._give_back(request_id)

    def _take(self, seq: Sequence) -> _Held:
        if not self._free:
            raise RuntimeError(f"no free Mamba state slot for {seq.request_id} ({self.num_slots} slots, all held)")
        held = self._held[seq.request_id] = _Held(seq, self._free.pop(), seq.num_preemptions)
        return held

    def _give_back(self, request_id: str) -> None:
        held = self._held.pop(request_id)
        self._free.append(held.slot)
        if held.boundary is not None:
            self.sessions.give_back(held.boundary)


def hybrid_engine_config(config: EngineConfig, runner: object) -> EngineConfig:
    """The engine's config for a runner with a state pool: at most as many running sequences as state slots,
    prefix-cache hits only where a session snapshot holds their state (logged), speculative decoding refused."""
    pool: MambaStatePool | None = getattr(runner, "mamba_states", None)
    if pool is None:
        return config
    if config.speculative is not None:
        raise UnsupportedHybrid("speculative decoding is not supported on a Mamba-2 hybrid (a rejected draft "
                                "would stay in the recurrent state); serve it without a speculative config")
    if config.enable_prefix_caching:
        logger.info("prefix caching on this Mamba-2 hybrid model only resumes agent sessions from their kept "
                    "state snapshots: a mixer state cannot be rebuilt from cached KV blocks, so any other prompt "
                    "is computed from its first token")
    if config.max_num_seqs > pool.num_slots:
        logger.info("max_num_seqs %d capped at the %d Mamba state slots", config.max_num_seqs, pool.num_slots)
    pool.block_size = config.block_size
    return replace(config, max_num_seqs=min(config.max_num_seqs, pool.num_slots))


def state_pool(config: ModelConfig, num_slots: int, dtype: torch.dtype, device: torch.device, kv_cache_dtype: str,
               tensor_parallel_size: int, quantized: bool, kv_tiers: bool) -> MambaStatePool | None:
    """A hybrid model's state pool of `num_slots` slots, after refusing what it does not serve; None for a
    model without mixers."""
    refuse_unsupported_hybrid(config.hybrid, kv_cache_dtype, tensor_parallel_size, quantized, kv_tiers)
    return None if config.hybrid is None else MambaStatePool(config.hybrid, num_slots, dtype, device, num_slots)


def state_pool_bytes(config: ModelConfig, num_slots: int, dtype: torch.dtype) -> int:
    """What `num_slots` running sequences' state slots and as many session snapshot slots take: out of the KV
    cache's byte budget (engine/build.py)."""
    return 0 if config.hybrid is None else 2 * num_slots * config.hybrid.state_bytes(dtype.itemsize)


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
