"""The disk tier of the KV cache, behind the GPU and the host tier (LMCache's local-disk backend, vLLM's
KV offloading to disk): blocks about to be lost are written to slots of a file, and a prefix found there
is loaded back instead of computed again. With a host tier, what the host evicts goes to disk; without
one, what the GPU evicts does (engine/kv_tiers.py). Keyed by the prefix cache's chain hash, checked
against the block's token ids on a hit, slots reused least recently used first (engine/kv_slots.py).

This is the table: it decides, in the block manager, for the torch and the simulated runner alike. The
file and its writes are the runner's (engine/disk_store.py). What the table holds survives a restart:
its entries are written to an index beside the file, and a new engine on the same folder starts from them
(engine/disk_index.py).

Reading a prefix back from the drive takes about as long as computing it (Llama-3.1-8B's KV from one NVMe
drive against an H100's prefill), and a step waits for its copies: so a waiting request's disk blocks are
first read ahead into memory by the runner, while other requests run, and the request is admitted once they
are all there (`ready`); its loads then copy from memory. At most `read_ahead_blocks` slots are read ahead
or held at once: a read done whose request did not ask for it in the latest scheduling pass (admitted,
gone, or behind others) gives way, least recently asked first; a request that would need more than the
budget loads the rest from the drive in its step, as without read-ahead. Requests earlier in the pass keep
their reads, so two waiting requests never take turns evicting each other's."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from engine.kv_slots import EvictHook, KVSlotTable, TierStats
from engine.kv_transfer import DISK, KVTransfer, Tier

# Memory a runner gives to blocks read ahead from disk, unless told otherwise (a long context of an 8B model).
DEFAULT_READ_AHEAD_BYTES = 4 << 30


class DiskEntry(NamedTuple):
    """One slot's block, as the index stores it."""

    slot: int
    block_hash: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class DiskCacheStats(TierStats):
    restored_blocks: int = 0  # taken over from the index an earlier engine left on this folder
    read_ahead_blocks: int = 0  # read into memory before the step that loaded them


class DiskKVCache(KVSlotTable):
    tier: Tier = DISK

    def __init__(self, num_slots: int, transfers: list[KVTransfer] | None = None, on_evict: EvictHook | None = None,
                 read_ahead_blocks: int = 0) -> None:
        super().__init__(num_slots, transfers, on_evict)
        self.restored_blocks = self.read_ahead_loads = 0
        self.read_ahead_blocks = read_ahead_blocks  # 0: every load reads the drive in its step
        self.reading: set[int] = set()  # slots being read ahead
        # Slots read ahead -> the scheduling pass that last asked for them, least recently asked first.
        self.read: OrderedDict[int, int] = OrderedDict()
        self.pass_no = 0  # scheduling passes so far (one a step)
        self.read_requests: list[int] = []  # slots to read ahead, for the runner
        self.drop_requests: list[int] = []  # slots read (or being read) ahead that will not be loaded: freed

    def ready(self, slots: list[int]) -> bool:
        """Whether a waiting request may load these slots now: all read ahead, or the rest not readable
        ahead (past the budget, which its own reads fill). Asks for the reads it still needs and waits while
        any runs, or while reads that requests before it in this pass asked for hold the budget (theirs
        finish, or their requests are admitted: the budget comes back)."""
        if not self.read_ahead_blocks:
            return True
        waiting = blocked = False
        keep = set(slots)
        for slot in slots:
            if slot in self.read:
                self.read[slot] = self.pass_no
                self.read.move_to_end(slot)
            elif slot in self.reading:
                waiting = True
            elif not blocked and self._room_to_read():
                self.reading.add(slot)
                self.read_requests.append(slot)
                waiting = True
            else:
                blocked = True
        if waiting or not blocked:
            return not waiting
        own = sum(1 for slot in keep if slot in self.read or slot in self.reading)
        return len(self.read) + len(self.reading) == own  # only its own reads fill the budget: go on

    def _room_to_read(self) -> bool:
        if len(self.reading) + len(self.read) < self.read_ahead_blocks:
            return True
        for slot, asked in self.read.items():  # the least recently asked read, if no request asked this pass
            if asked < self.pass_no:
                self._forget_read(slot)
                return True
            break
        return False

    def _forget_read(self, slot: int) -> None:
        self.reading.discard(slot)
        self.read.pop(slot, None)
        self.drop_requests.append(slot)

    def mark_read(self, slots: list[int]) -> None:
        """The runner read these slots ahead (a slot forgotten meanwhile stays forgotten)."""
        for slot in slots:
            if slot in self.reading:
                self.reading.remove(slot)
                self.read[slot] = self.pass_no

    def take_read_requests(self) -> tuple[list[int], list[int]]:
        """(slots to read ahead, slots read ahead to free) since the last call."""
        reads, drops = self.read_requests, self.drop_requests
        self.read_requests, self.drop_requests = [], []
        self.pass_no += 1  # taken once a step, after its scheduling pass
        return reads, drops

    def load(self, slot: int, block_id: int, ahead: bool = False) -> None:
        ahead = slot in self.read
        if ahead:
            del self.read[slot]
        elif slot in self.reading:  # another request's read, not done: this load reads the drive itself
            self._forget_read(slot)
        self.read_ahead_loads += ahead
        super().load(slot, block_id, ahead)

    def _free_slot(self) -> int | None:
        slot = super()._free_slot()
        if slot is not None and (slot in self.read or slot in self.reading):  # its block is gone: stale
            self._forget_read(slot)
        return slot

    def forget_all(self) -> int:
        for slot in [*self.read, *self.reading]:  # what was read ahead is stale too: freed
            self._forget_read(slot)
        return super().forget_all()

    def entries(self) -> list[DiskEntry]:
        """Every block the table holds whose save has been handed to the runner, least recent first."""
        return [DiskEntry(slot, block_hash, self.slot_tokens[slot])  # type: ignore[arg-type]
                for block_hash, slot in self.slot_of.items() if slot not in self.queued_saves]

    def restore(self, entries: list[DiskEntry]) -> None:
        """Start from an earlier engine's blocks (least recent first), before anything else happens."""
        assert not self.slot_of and not self.transfers, "restored into a fresh table"
        taken: set[int] = set()
        for entry in entries:
            if 0 <= entry.slot < self.num_slots and entry.slot not in taken and entry.block_hash not in self.slot_of:
                taken.add(entry.slot)
                self.slot_of[entry.block_hash] = entry.slot
                self.slot_hash[entry.slot], self.slot_tokens[entry.slot] = entry.block_hash, tuple(entry.token_ids)
        self.free_slots = [s for s in range(self.num_slots - 1, -1, -1) if s not in taken]
        self.restored_blocks = len(taken)

    def stats(self) -> DiskCacheStats:
        base = super().stats()
        return DiskCacheStats(**vars(base), restored_blocks=self.restored_blocks, read_ahead_blocks=self.read_ahead_loads)
