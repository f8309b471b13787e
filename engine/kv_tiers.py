"""The slower tiers behind the GPU's KV blocks, as the block manager uses them: host memory
(engine/host_cache.py) and disk (engine/disk_cache.py), either or both.

Where a block goes when its GPU block is reused: to the host tier when there is one (and to disk when
every host slot is busy this step), else to disk. What the host tier evicts goes to disk: the disk
holds what fell out of host memory, so a block crosses the slow link once, when it is about to be lost
(write-back). A waiting request's prefix is taken block by block after its GPU hits, from the host when
it holds the block, else from disk (read ahead into memory first, while the request waits). All copies go on one queue, in the order they were decided: a host
slot's block is written to disk before the save that reuses the slot overwrites it."""

from __future__ import annotations

from collections.abc import Callable

from engine.disk_cache import DiskKVCache
from engine.group_tiers import TierHit, tier_slots
from engine.host_cache import HostKVCache
from engine.kv_slots import KVSlotTable
from engine.kv_transfer import DISK, HOST, HOST_TO_DISK, KVTransfer, Tier, TierSlot

# (block id, chain hash, token ids) of a GPU block that caches a prefix.
CachedBlock = tuple[int, int, tuple[int, ...]]


class KVTiers:
    def __init__(self, num_host_blocks: int = 0, num_disk_blocks: int = 0) -> None:
        self.transfers: list[KVTransfer] = []
        self.disk = DiskKVCache(num_disk_blocks, self.transfers) if num_disk_blocks else None
        demote = self._demote if self.disk is not None else None
        self.host = HostKVCache(num_host_blocks, self.transfers, demote) if num_host_blocks else None
        self.hit_tokens: dict[Tier, int] = {HOST: 0, DISK: 0}

    def __bool__(self) -> bool:
        return self.host is not None or self.disk is not None

    def _table(self, tier: Tier) -> KVSlotTable:
        table = self.host if tier == HOST else self.disk
        assert table is not None
        return table

    def save_evicted(self, block_id: int, block_hash: int, token_ids: tuple[int, ...]) -> None:
        """GPU block `block_id` is about to be reused: keep its block in the nearest tier with room."""
        if self.host is not None and self.host.save(block_id, block_hash, token_ids):
            return
        if self.disk is not None:
            self.disk.save(block_id, block_hash, token_ids)

    def _demote(self, host_slot: int, block_hash: int, token_ids: tuple[int, ...]) -> None:
        """The host tier reuses `host_slot`: its block goes to disk (copied before the slot is overwritten)."""
        assert self.disk is not None
        self.disk.save(host_slot, block_hash, token_ids, HOST_TO_DISK)

    def match(self, block_hashes: list[int], block_tokens: Callable[[int], tuple[int, ...]], start: int,
              end: int) -> list[TierSlot]:
        """The slots holding blocks `start`..`end - 1` of a prompt, from the host where it has a block,
        else from disk, up to the first block neither has. They stay busy until the step's copies are taken."""
        hits: list[TierSlot] = []
        for i in range(start, end):
            tokens = block_tokens(i)
            slot = self.host.lookup(block_hashes[i], tokens) if self.host is not None else None
            if slot is not None:
                hits.append(TierSlot(HOST, slot))
                continue
            slot = self.disk.lookup(block_hashes[i], tokens) if self.disk is not None else None
            if slot is None:
                break
            hits.append(TierSlot(DISK, slot))
        return hits

    def ready(self, hits: list[TierHit]) -> bool:
        """Whether a waiting request may load `hits` in the next step: its disk blocks read ahead, or not
        being read (engine/disk_cache.py). Otherwise it waits, and other requests go first."""
        slots = [hit.slot for hit in tier_slots(hits) if hit.tier == DISK]
        return not slots or self.disk is None or self.disk.ready(slots)

    def load(self, hit: TierSlot, block_id: int, block_size: int) -> None:
        self._table(hit.tier).load(hit.slot, block_id)
        self.hit_tokens[hit.tier] += block_size

    def take_transfers(self) -> list[KVTransfer]:
        """The copies the next step performs before its forward pass, in the order they were decided."""
        transfers = list(self.transfers)
        self.transfers.clear()
        for table in (self.host, self.disk):
            if table is not None:
                table.end_step()
        return transfers

    def forget_all(self) -> int:
        """Every tier's blocks forgotten (engine/weight_updates.py); returns how many."""
        return sum(table.forget_all() for table in (self.host, self.disk) if table is not None)

    def plan_flush(self, gpu_blocks: list[CachedBlock]) -> int:
        """Before a clean shutdown: write to disk the blocks the host tier and the GPU (`gpu_blocks`, least
        recent first) still cache and the disk lacks, so a restarted engine finds them there. The most
        recent ones when the disk cannot take them all. Returns the number of copies queued."""
        disk = self.disk
        if disk is None:
            return 0
        # Least recent first: the host holds what the GPU evicted, so all of it is older than the GPU's.
        candidates: list[tuple[Tier, int, int, tuple[int, ...]]] = []
        if self.host is not None:
            candidates += [(HOST_TO_DISK, slot, h, self.host.slot_tokens[slot])  # type: ignore[misc]
                           for h, slot in self.host.slot_of.items()]
        candidates += [(DISK, block_id, h, tokens) for block_id, h, tokens in gpu_blocks]
        newest: dict[int, tuple[Tier, int, int, tuple[int, ...]]] = {}
        for candidate in reversed(candidates):  # each block once, the most recent that fit
            if len(newest) == disk.num_slots:
                break
            newest.setdefault(candidate[2], candidate)
        kept = list(reversed(newest.values()))
        for _, _, block_hash, _ in kept:  # what the disk has already must not make room for the rest
            if block_hash in disk.slot_of:
                disk.busy.add(disk.slot_of[block_hash])
        queued = len(self.transfers)
        for tier, source, block_hash, tokens in kept:
            disk.save(source, block_hash, tokens, tier)
        return len(self.transfers) - queued
