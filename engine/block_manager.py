"""Paged KV blocks with prefix caching (engine/prefix_match.py) and TTL pins (engine/block_pins.py).

Blocks with no holder go to a free queue that evicts least recently
freed first, so cached prefixes live as long as memory allows. Pins hold references until their
deadline; under memory pressure they give way (earliest deadline first) before the scheduler has to
preempt a running request. With a host or disk tier behind the GPU (engine/kv_tiers.py), a cached block
is copied there when its GPU block is reused, and a prefix found there is loaded back instead of computed.

A model whose every layer attends to a sliding window (Mistral-7B-v0.1's 4,096 tokens) reads no block
that slid out of it: such blocks are released as a request moves on (vLLM's sliding-window manager),
their table entries left as NULL_BLOCK, so a request holds about a window of KV however long it runs.
Released blocks stay cached; a prefix is reused when the blocks its next token's window reads are
cached, whatever became of the ones before them.

A model that mixes sliding and full-attention layers (gpt-oss, Gemma 2/3) has KV groups (engine/kv_groups.py,
vLLM's hybrid KV cache manager): each group has its own block table per request, all take blocks from this one
pool, and the sliding groups release the blocks that left their window while the full groups keep theirs.
Every group's table has the same length and the sliding groups release alike, so one count of released
blocks serves them all."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.block_pins import BlockPins
from engine.disk_cache import DiskCacheStats, DiskKVCache
from engine.group_tiers import GroupSlots, TierHit, group_block_key, tier_slots
from engine.host_cache import HostCacheStats, HostKVCache
from engine.kv_tiers import KVTiers
from engine.kv_transfer import DISK, HOST, KVTransfer
from engine.pins import PinTable
from engine.prefix_match import PrefixMatch, chain_hash
from engine.sequence import NULL_BLOCK, Sequence

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.kv_groups import KVGroupLayout

__all__ = ["NULL_BLOCK", "Block", "BlockManager", "BlockStats", "chain_hash"]


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "group", "slid_out")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None
        self.group = 0  # the KV group whose cached blocks it is among, while it has a hash
        self.slid_out = False  # last released as it left a request's window: a tier is not given it


@dataclass(frozen=True)
class BlockStats:
    total: int
    used: int  # held by a running request or a pin
    cached_free: int  # free, but still holding a reusable prefix
    free: int
    pinned: int
    pins: int
    prefix_query_tokens: int
    prefix_hit_tokens: int  # served from GPU blocks
    host_hit_tokens: int = 0  # loaded back from the host tier
    host: HostCacheStats | None = None
    disk_hit_tokens: int = 0  # loaded back from the disk tier
    disk: DiskCacheStats | None = None
    # KV groups sharing the blocks (engine/kv_groups.py): a request holds a block of each per block_size tokens
    # (a sliding group's only within its window), so the blocks hold total * block_size / kv_groups tokens at least.
    kv_groups: int = 1


class BlockManager(PrefixMatch, BlockPins):
    """`sliding_window`: the window of the layers that slide, whose blocks are released once they leave it
    (None: none are). `kv_groups`: with a model that mixes layer kinds, whether each KV group's layers slide;
    None: one group, sliding where `sliding_window` is set."""

    def __init__(self, num_blocks: int, block_size: int, pin_budget_blocks: int = 0,
                 enable_prefix_caching: bool = True, num_host_blocks: int = 0,
                 sliding_window: int | None = None, num_disk_blocks: int = 0,
                 kv_groups: tuple[bool, ...] | None = None) -> None:
        assert enable_prefix_caching or not (num_host_blocks or num_disk_blocks), \
            "the host and disk tiers are keyed by the prefix cache's hashes"
        self.block_size = block_size
        self.pin_budget_blocks = pin_budget_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        slides = kv_groups or (True,)
        self.group_slides = tuple(s and sliding_window is not None for s in slides)
        self.cached_blocks: list[dict[int, int]] = [{} for _ in slides]
        self.hash_to_block = self.cached_blocks[0]  # the first group's (the only one's, for most models)
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.pins = PinTable()
        self.spilled_pins: dict[str, tuple[float, list[int]]] = {}
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.tiers = KVTiers(num_host_blocks, num_disk_blocks)
        self.sliding_window = sliding_window if any(self.group_slides) else None

    @classmethod
    def for_model(cls, config: EngineConfig, window: int | None, groups: KVGroupLayout | None) -> BlockManager:
        """An engine's, for a model whose every layer slides over `window` tokens, or with KV `groups`. A
        request holds all of its KV, unless its blocks slide out of the window and are released (where every
        layer slides, when the cache holds a window and a prefill chunk: what such a request holds at most)."""
        slide = groups.window if groups is not None else window
        if not config.release_slid_out_blocks or groups is None and slide is not None and config.num_blocks * \
                config.block_size < slide + config.long_prefill_token_threshold + 2 * config.block_size:
            slide = None
        return cls(config.num_blocks, config.block_size, config.pin_budget_blocks, config.enable_prefix_caching,
                   config.num_host_blocks, slide, config.num_disk_blocks, groups.slides if groups else None)

    def max_context_tokens(self, max_chunk: int) -> int | None:
        """The longest context one request can hold in the whole cache (None: any, every group slides):
        each full group holds all of its blocks, a sliding one a window and a chunk at most."""
        num_full = self.group_slides.count(False)
        if not num_full:
            return None
        per_group = self.num_blocks // len(self.group_slides)  # every group holding the whole context
        if self.sliding_window is None:
            return per_group * self.block_size
        window = -(-(self.sliding_window + max_chunk) // self.block_size) + 1
        spare = self.num_blocks - (len(self.group_slides) - num_full) * window
        return max(min(per_group, window), spare // num_full) * self.block_size

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def host(self) -> HostKVCache | None:
        return self.tiers.host

    @property
    def disk(self) -> DiskKVCache | None:
        return self.tiers.disk

    @property
    def host_hit_tokens(self) -> int:
        return self.tiers.hit_tokens[HOST]

    @property
    def disk_hit_tokens(self) -> int:
        return self.tiers.hit_tokens[DISK]

    # ---- tiers ----------------------------------------------------------------------------------

    def take_transfers(self) -> list[KVTransfer]:
        """Host- and disk-tier copies the next step must perform before its forward pass, in order."""
        return self.tiers.take_transfers()

    def plan_disk_flush(self) -> list[KVTransfer]:
        """The copies that put on disk what the GPU and host tier cache and the disk lacks (before a clean
        shutdown: engine/disk_tier.py); the GPU's cached-free blocks count as older than held ones."""
        order = [b for b in self.free_queue] + [b.block_id for b in self.blocks if b.ref_count > 0]
        cached = [(b, group_block_key(block.hash, block.group), block.token_ids) for b in order
                  if (block := self.blocks[b]).hash is not None and block.token_ids is not None]
        self.tiers.plan_flush(cached)  # type: ignore[arg-type]
        return self.take_transfers()

    # ---- allocation ---------------------------------------------------------------------------

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _release(self, block_id: int, slid_out: bool = False) -> None:
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"double free of block {block_id}"
        block.ref_count -= 1
        if block.ref_count == 0:
            block.slid_out = slid_out
            self.free_queue[block_id] = None
            if block.hash is None:  # nothing reusable in it: first to go
                self.free_queue.move_to_end(block_id, last=False)

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            cached = self.cached_blocks[block.group]
            if cached.get(block.hash) == block_id:
                del cached[block.hash]
            if self.tiers and not (block.slid_out and len(self.group_slides) > 1):  # groups: a window spills
                assert block.token_ids is not None
                self.tiers.save_evicted(block_id, group_block_key(block.hash, block.group), block.token_ids)
            block.hash = block.token_ids = None
        block.ref_count = 1
        return block_id

    def allocate_slots(self, seq: Sequence, num_new_tokens: int,
                       cached_blocks: list[int] | None = None, reclaim_pins: bool = True,
                       num_lookahead_tokens: int = 0, loaded: list[TierHit] | None = None) -> bool:
        """Give `seq` blocks for `num_new_tokens` more tokens (plus, when it starts, `cached_blocks`
        and fresh blocks `loaded` from the host or disk tier's slots, which follow them), and room for
        `num_lookahead_tokens` draft tokens after them, which are not published to the prefix cache
        (they may be rejected). Returns False, changing nothing, when memory is short even after pins
        gave way (pins give way only with `reclaim_pins`)."""
        if self.sliding_window is not None and seq.block_table:
            self._release_slid_out(seq)
        if not cached_blocks and seq.block_table:  # the common case: a decode inside its last block
            total = seq.num_computed_tokens + num_new_tokens
            if total + num_lookahead_tokens <= len(seq.block_table) * self.block_size:
                self.register_computed(seq, total)
                return True
        cached_blocks, loaded = cached_blocks or [], loaded or []
        starting = not seq.block_table and seq.num_computed_tokens == 0
        assert not (cached_blocks or loaded) or starting
        num_hits = len(cached_blocks) + len(loaded)
        total_tokens = seq.num_computed_tokens + num_hits * self.block_size + num_new_tokens + num_lookahead_tokens
        needed = -(-total_tokens // self.block_size) - len(seq.block_table) - len(cached_blocks)  # in each group
        hits = [cached_blocks] if len(self.group_slides) == 1 else self.group_hits(seq, len(cached_blocks))
        held = [b for group in hits for b in group if b != NULL_BLOCK]
        for b in held:  # taken first, so reclaiming pins cannot evict the hits
            self._take(b)
        # A sliding group takes no block for a loaded one before its window (engine/group_tiers.py).
        total_needed = (needed - len(loaded)) * len(self.group_slides) + len(tier_slots(loaded))
        if total_needed > self.num_free_blocks and not (reclaim_pins and self._reclaim(total_needed)):
            for b in held:
                self._release(b)
            return False
        if starting:
            self.prefix_query_tokens += seq.num_tokens
            self.prefix_hit_tokens += len(cached_blocks) * self.block_size
            self.pins.counters.hit_tokens += self.block_size * sum(
                1 for b in cached_blocks if b != NULL_BLOCK and b in self.pins.holders)
            seq.block_tables = [list(group) for group in hits]
            seq.num_released_blocks = max(group.count(NULL_BLOCK) for group in hits)
            self._load_from_tiers(seq, loaded)
            needed -= len(loaded)
            seq.num_computed_tokens = num_hits * self.block_size
            seq.num_registered_blocks = num_hits
            if loaded and self.sliding_window is not None and len(self.group_slides) > 1:
                self._release_slid_out(seq)  # the GPU hits' window before the loaded blocks
        for _ in range(max(needed, 0)):
            for table in seq.block_tables:
                table.append(self._pop_free())
        self.register_computed(seq, seq.num_computed_tokens + num_new_tokens)
        return True

    def _release_slid_out(self, seq: Sequence) -> None:
        """Release the blocks no later query of `seq` reads in a sliding group: they left its window."""
        first = min(self.first_needed_block(seq.num_computed_tokens), len(seq.block_table))
        if first <= seq.num_released_blocks:  # most steps: nothing left the window since the last
            return
        for table, slides in zip(seq.block_tables, self.group_slides, strict=True):
            if not slides:
                continue
            for i in range(seq.num_released_blocks, first):
                if table[i] != NULL_BLOCK:
                    self._release(table[i], slid_out=True)
                    table[i] = NULL_BLOCK
        seq.num_released_blocks = max(seq.num_released_blocks, first)

    def _load_from_tiers(self, seq: Sequence, loaded: list[TierHit]) -> None:
        """Fresh blocks for the prefix the host or disk tier holds after `seq`'s GPU hits, published at
        once: their copies run before anything in the step reads them. With KV groups, each group's block
        (engine/group_tiers.py; NULL_BLOCK for a sliding group's before the window)."""
        bs = self.block_size
        for hit in loaded:
            i = len(seq.block_table)
            block_hash, token_ids = seq.block_hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs])
            slots = hit.slots if isinstance(hit, GroupSlots) else (hit,)
            for group, (table, slot) in enumerate(zip(seq.block_tables, slots, strict=True)):
                if slot is None:
                    table.append(NULL_BLOCK)
                    continue
                block_id = self._pop_free()  # its own block, if cached, is saved first: the copies keep order
                block = self.blocks[block_id]
                block.hash, block.token_ids, block.group = block_hash, token_ids, group
                self.cached_blocks[group].setdefault(block_hash, block_id)
                self.tiers.load(slot, block_id, bs if group == 0 else 0)  # tokens counted once, by the first
                table.append(block_id)

    def reserve(self, seq: Sequence, num_tokens: int) -> None:
        """Blocks for `num_tokens` from the free queue, as single decode steps would have taken them;
        the caller checked they are free. Their hashes are published once the tokens exist."""
        needed = -(-num_tokens // self.block_size) - len(seq.block_table)
        assert needed * len(seq.block_tables) <= self.num_free_blocks
        for _ in range(needed):
            for table in seq.block_tables:
                table.append(self._pop_free())

    def register_computed(self, seq: Sequence, num_tokens: int) -> None:
        """Publish blocks that are full once `num_tokens` are computed, so later requests can hit them."""
        num_full = num_tokens // self.block_size
        if num_full <= seq.num_registered_blocks or not self.enable_prefix_caching:
            return
        bs = self.block_size
        self._ensure_hashes(seq, num_full)
        for i in range(seq.num_registered_blocks, num_full):
            block_hash, token_ids = seq.block_hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs])
            for group, (table, cached) in enumerate(zip(seq.block_tables, self.cached_blocks, strict=True)):
                if table[i] == NULL_BLOCK:
                    continue
                block = self.blocks[table[i]]
                if block.hash is None and block_hash not in cached:
                    block.hash, block.token_ids, block.group = block_hash, token_ids, group
                    cached[block_hash] = block.block_id
        seq.num_registered_blocks = max(seq.num_registered_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        # Tail blocks are the least likely to be shared: they enter the free queue first.
        first = self.first_needed_block(seq.num_computed_tokens)  # a sliding group's blocks before: out of its window
        for i in reversed(range(len(seq.block_table))):
            for table, slides in zip(seq.block_tables, self.group_slides, strict=True):
                if table[i] != NULL_BLOCK:
                    self._release(table[i], slid_out=slides and i < first)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = seq.num_released_blocks = 0

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix, pinned or in a slower tier, so that no later request reuses KV
        computed before now (engine/weight_updates.py: the weights changed). Blocks requests hold stay
        theirs, unshared. Returns the blocks forgotten."""
        for key in list(self.pins.pins):
            self._drop_pin(key, evicted=True)
        forgotten = sum(len(cached) for cached in self.cached_blocks)
        for cached in self.cached_blocks:
            cached.clear()
        for block in self.blocks:
            if block.hash is not None:
                block.hash = block.token_ids = None
                if block.ref_count == 0:  # nothing reusable in it any more: first to go
                    self.free_queue.move_to_end(block.block_id, last=False)
        self.spilled_pins.clear()
        return forgotten + self.tiers.forget_all()

    # ---- introspection ------------------------------------------------------------------------

    def stats(self) -> BlockStats:
        cached_free = sum(1 for b in self.free_queue if self.blocks[b].hash is not None)
        return BlockStats(
            total=self.num_blocks,
            used=self.num_blocks - self.num_free_blocks,
            cached_free=cached_free,
            free=self.num_free_blocks,
            pinned=self.pins.num_pinned_blocks,
            pins=len(self.pins),
            prefix_query_tokens=self.prefix_query_tokens,
            prefix_hit_tokens=self.prefix_hit_tokens,
            host_hit_tokens=self.host_hit_tokens,
            host=self.host.stats() if self.host is not None else None,
            disk_hit_tokens=self.disk_hit_tokens,
            disk=self.disk.stats() if self.disk is not None else None,
            kv_groups=len(self.group_slides),
        )
