"""The slot table of one slower KV tier (host memory, disk): which block each slot holds, keyed by the
prefix cache's chain hash and checked against the block's token ids on a hit, slots reused least
recently used first.

The table only decides; copies are queued as `KVTransfer`s (engine/kv_transfer.py) on a list the tiers
share, so the runner performs them in the order they were decided. A slot a queued copy reads or writes
is busy until the step's copies are taken, so no later decision of the same step overwrites it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from engine.kv_transfer import KVTransfer, Tier

# Called as an occupied slot is taken for another block, before the copy that overwrites it is queued:
# (slot, block hash, token ids) of the block it loses.
EvictHook = Callable[[int, int, tuple[int, ...]], None]


@dataclass(frozen=True)
class TierStats:
    total: int
    used: int
    saved_blocks: int  # copies into the tier
    loaded_blocks: int  # copies back to the GPU: hits
    evicted_blocks: int  # slots reused for another block
    skipped_saves: int  # blocks not saved: every slot was busy this step


class KVSlotTable:
    tier: Tier  # the tier a save from the GPU and a load back copy between

    def __init__(self, num_slots: int, transfers: list[KVTransfer] | None = None,
                 on_evict: EvictHook | None = None) -> None:
        assert num_slots > 0
        self.num_slots = num_slots
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # block hash -> slot, least recent first
        self.slot_hash: list[int | None] = [None] * num_slots
        self.slot_tokens: list[tuple[int, ...] | None] = [None] * num_slots
        self.free_slots = list(range(num_slots - 1, -1, -1))
        self.busy: set[int] = set()
        self.queued_saves: set[int] = set()  # slots whose save is queued, not yet taken by a step
        self.transfers = [] if transfers is None else transfers
        self.on_evict = on_evict
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

    def save(self, block_id: int, block_hash: int, token_ids: tuple[int, ...], tier: Tier | None = None) -> bool:
        """Block `block_id` (a GPU block; a host slot for a HOST_TO_DISK `tier`) is about to be lost: keep a
        copy, unless the tier has one already. False when every slot was busy and nothing was saved."""
        if block_hash in self.slot_of:
            self.slot_of.move_to_end(block_hash)
            return True
        slot = self._free_slot()
        if slot is None:
            self.skipped_saves += 1
            return False
        self.slot_of[block_hash] = slot
        self.slot_hash[slot], self.slot_tokens[slot] = block_hash, token_ids
        self.busy.add(slot)
        self.queued_saves.add(slot)
        self.transfers.append(KVTransfer(True, block_id, slot, tier or self.tier, block_hash))
        self.saved_blocks += 1
        return True

    def load(self, slot: int, block_id: int, ahead: bool = False) -> None:
        assert slot in self.busy, "a slot is looked up (and so held) before it is loaded"
        self.transfers.append(KVTransfer(False, block_id, slot, self.tier, ahead=ahead))
        self.loaded_blocks += 1

    def end_step(self) -> None:
        """The step's copies were taken: their slots may be decided on again."""
        self.busy.clear()
        self.queued_saves.clear()

    def take_transfers(self) -> list[KVTransfer]:
        """The copies queued since the last call, in order (for a table that owns its queue)."""
        transfers = list(self.transfers)
        self.transfers.clear()
        self.end_step()
        return transfers

    def _free_slot(self) -> int | None:
        if self.free_slots:
            return self.free_slots.pop()
        for block_hash, slot in self.slot_of.items():  # least recently used first, skipping busy slots
            if slot not in self.busy:
                del self.slot_of[block_hash]
                self.evicted_blocks += 1
                if self.on_evict is not None:
                    tokens = self.slot_tokens[slot]
                    assert tokens is not None
                    self.on_evict(slot, block_hash, tokens)
                return slot
        return None

    def release(self, block_hash: int) -> bool:
        """Free the block's slot (the pin that spilled it expired: engine/block_pins.py), reused before any
        cached block; False where the tier lacks it or a copy this step still reads or writes its slot."""
        slot = self.slot_of.get(block_hash)
        if slot is None or slot in self.busy:
            return False
        del self.slot_of[block_hash]
        self.slot_hash[slot] = self.slot_tokens[slot] = None
        self.free_slots.append(slot)
        return True

    def forget_all(self) -> int:
        """Forget every block the tier holds (their KV no longer valid: new weights); returns how many.
        A copy still queued into a slot runs before any later one that reuses it."""
        forgotten = len(self.slot_of)
        self.slot_of.clear()
        self.slot_hash = [None] * self.num_slots
        self.slot_tokens = [None] * self.num_slots
        self.free_slots = list(range(self.num_slots - 1, -1, -1))
        return forgotten

    def stats(self) -> TierStats:
        return TierStats(self.num_slots, len(self.slot_of), self.saved_blocks, self.loaded_blocks,
                         self.evicted_blocks, self.skipped_saves)
