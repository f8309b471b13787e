"""The host tier of the KV cache: KV blocks the GPU evicts are copied to host memory, so a later
prompt with that prefix loads them back over the host link instead of computing them again (vLLM's
KV offloading, SGLang's hierarchical cache).

A block is saved when the block manager reuses it for something else (write-back on eviction: only
blocks that are about to be lost cross the link), keyed by the same chain hash as the GPU prefix
cache and checked against its token ids on a hit. Host slots are reused least recently used first.

The table only decides; copies are queued as `KVTransfer`s that the runner performs at the start of
the step that follows, in order, before the forward pass writes into any block. A slot a queued
copy reads or writes is busy until then, so no later decision of the same step overwrites it."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class KVTransfer:
    """One block copy: GPU block `block_id` to host slot `slot` (`to_host`), or back."""

    to_host: bool
    block_id: int
    slot: int


@dataclass(frozen=True)
class HostCacheStats:
    total: int
    used: int
    saved_blocks: int  # copies to the host
    loaded_blocks: int  # copies back: host hits
    evicted_blocks: int  # host slots reused for another block
    skipped_saves: int  # evicted GPU blocks not saved: every host slot was busy this step


class HostKVCache:
    def __init__(self, num_slots: int) -> None:
        assert num_slots > 0
        self.num_slots = num_slots
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # block hash -> slot, least recent first
        self.slot_hash: list[int | None] = [None] * num_slots
        self.slot_tokens: list[tuple[int, ...] | None] = [None] * num_slots
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.busy: set[int] = set()
        self.transfers: list[KVTransfer] = []
        self.saved_blocks = self.loaded_blocks = self.evicted_blocks = self.skipped_saves = 0

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self.slot_of

    def lookup(self, block_hash: int, token_ids: tuple[int, ...]) -> int | None:
        """The slot holding this block, made busy (a load will read it), or None."""
        slot = self.slot_of.get(block_hash)
        if slot is None or self.slot_tokens[slot] != token_ids:
            return None
        self.slot_of.move_to_end(block_hash)
        self.busy.add(slot)
        return slot

    def save(self, block_id: int, block_hash: int, token_ids: tuple[int, ...]) -> None:
        """GPU block `block_id` is about to be reused: keep a copy, unless the host has one already."""
        if block_hash in self.slot_of:
            self.slot_of.move_to_end(block_hash)
            return
        slot = self._free_slot()
        if slot is None:
            self.skipped_saves += 1
            return
        self.slot_of[block_hash] = slot
        self.slot_hash[slot], self.slot_tokens[slot] = block_hash, token_ids
        self.busy.add(slot)
        self.transfers.append(KVTransfer(True, block_id, slot))
        self.saved_blocks += 1

    def load(self, slot: int, block_id: int) -> None:
        assert slot in self.busy, "a slot is looked up (and so held) before it is loaded"
        self.transfers.append(KVTransfer(False, block_id, slot))
        self.loaded_blocks += 1

    def take_transfers(self) -> list[KVTransfer]:
        """The copies queued since the last call, in order; the runner performs them before the step."""
        transfers, self.transfers = self.transfers, []
        self.busy.clear()
        return transfers

    def _free_slot(self) -> int | None:
        if self.free_slots:
            return self.free_slots.pop()
        for block_hash, slot in self.slot_of.items():  # least recently used first, skipping busy slots
            if slot not in self.busy:
                del self.slot_of[block_hash]
                self.evicted_blocks += 1
                return slot
        return None

    def stats(self) -> HostCacheStats:
        return HostCacheStats(self.num_slots, len(self.slot_of), self.saved_blocks, self.loaded_blocks,
                              self.evicted_blocks, self.skipped_saves)
