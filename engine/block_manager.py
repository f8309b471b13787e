"""Paged KV blocks with prefix caching and TTL pins.

A full block is identified by a hash chain over its tokens and its parent's hash; a hit is checked
against the stored token ids. Blocks with no holder go to a free queue that evicts least recently
freed first, so cached prefixes live as long as memory allows. Pins hold references until their
deadline; under memory pressure they give way (earliest deadline first) before the scheduler has to
preempt a running request. With a host or disk tier behind the GPU (engine/kv_tiers.py), a cached block
is copied there when its GPU block is reused, and a prefix found there is loaded back instead of computed.

A model whose every layer attends to a sliding window (Mistral-7B-v0.1's 4,096 tokens) reads no block
that slid out of it: such blocks are released as a request moves on (vLLM's sliding-window manager),
their table entries left as NULL_BLOCK, so a request holds about a window of KV however long it runs.
Released blocks stay cached; a prefix is reused when the blocks its next token's window reads are
cached, whatever became of the ones before them."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engine.block_pins import BlockPins
from engine.disk_cache import DiskCacheStats, DiskKVCache
from engine.host_cache import HostCacheStats, HostKVCache
from engine.image_inputs import block_image_keys
from engine.kv_tiers import KVTiers
from engine.kv_transfer import DISK, HOST, KVTransfer, TierSlot
from engine.pins import PinTable
from engine.sequence import NULL_BLOCK, Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None


def chain_hash(parent: int, token_ids: tuple[int, ...], extra_keys: tuple[int, ...] = ()) -> int:
    """Stable across processes (ints and tuples of ints hash alike in every run of one Python version).
    `extra_keys`: the content hashes of the images whose feature tokens the block holds (engine/image_inputs.py),
    which its placeholder tokens do not tell apart."""
    return hash((parent, token_ids, extra_keys)) if extra_keys else hash((parent, token_ids))


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


class BlockManager(BlockPins):
    def __init__(self, num_blocks: int, block_size: int, pin_budget_blocks: int = 0,
                 enable_prefix_caching: bool = True, num_host_blocks: int = 0,
                 sliding_window: int | None = None, num_disk_blocks: int = 0) -> None:
        assert enable_prefix_caching or not (num_host_blocks or num_disk_blocks), \
            "the host and disk tiers are keyed by the prefix cache's hashes"
        self.block_size = block_size
        self.pin_budget_blocks = pin_budget_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.hash_to_block: dict[int, int] = {}
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.pins = PinTable()
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.tiers = KVTiers(num_host_blocks, num_disk_blocks)
        self.sliding_window = sliding_window  # every layer's window, in tokens; None: some layer reads it all

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

    # ---- prefix cache -------------------------------------------------------------------------

    def _ensure_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        hashes, bs, tokens = seq.block_hashes, self.block_size, seq.token_ids
        for i in range(len(hashes), num_full_blocks):
            parent = hashes[-1] if hashes else seq.hash_seed  # a LoRA adapter's chains start apart
            extra = block_image_keys(seq.images, i * bs, (i + 1) * bs) if seq.images else ()
            hashes.append(chain_hash(parent, tuple(tokens[i * bs : (i + 1) * bs]), extra))

    def _lookup(self, block_hash: int, token_ids: list[int]) -> int | None:
        block_id = self.hash_to_block.get(block_hash)
        if block_id is None or self.blocks[block_id].token_ids != tuple(token_ids):
            return None
        return block_id

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks covering the longest prefix of `seq`, keeping at least one token to compute."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        num_full = (seq.num_tokens - 1) // bs
        self._ensure_hashes(seq, num_full)
        cached = (self._lookup(seq.block_hashes[i], seq.token_ids[i * bs : (i + 1) * bs]) for i in range(num_full))
        if self.sliding_window is None:
            hits: list[int] = []
            for block_id in cached:
                if block_id is None:
                    break
                hits.append(block_id)
            return hits
        return self._window_hits(list(cached))

    def first_needed_block(self, num_tokens: int) -> int:
        """The first block the window of a query at position `num_tokens` reads (0 without a window)."""
        if self.sliding_window is None:
            return 0
        return max(0, num_tokens - self.sliding_window + 1) // self.block_size

    def _window_hits(self, cached: list[int | None]) -> list[int]:
        """The longest run of hits whose last window is cached: NULL_BLOCK for the blocks before it."""
        run_start = 0  # where the run of cached blocks ending at i starts
        best: list[int] = []
        for i, block_id in enumerate(cached):
            if block_id is None:
                run_start = i + 1
                continue
            first = self.first_needed_block((i + 1) * self.block_size)
            if run_start <= first:
                best_len = i + 1
                best = [NULL_BLOCK] * first + [b for b in cached[first:best_len] if b is not None]
        return best

    def match_tiers(self, seq: Sequence, num_gpu_hits: int) -> list[TierSlot]:
        """Host or disk slots holding the blocks that follow `seq`'s `num_gpu_hits` GPU hits, keeping at
        least one token to compute. They stay busy until the step's transfers are taken."""
        if not self.tiers:
            return []
        bs = self.block_size
        num_full = (seq.num_tokens - 1) // bs
        self._ensure_hashes(seq, num_full)
        return self.tiers.match(seq.block_hashes, lambda i: tuple(seq.token_ids[i * bs : (i + 1) * bs]),
                                num_gpu_hits, num_full)

    def take_transfers(self) -> list[KVTransfer]:
        """Host- and disk-tier copies the next step must perform before its forward pass, in order."""
        return self.tiers.take_transfers()

    def plan_disk_flush(self) -> list[KVTransfer]:
        """The copies that put on disk what the GPU and host tier cache and the disk lacks (before a clean
        shutdown: engine/disk_tier.py); the GPU's cached-free blocks count as older than held ones."""
        order = [b for b in self.free_queue] + [b.block_id for b in self.blocks if b.ref_count > 0]
        cached = [(b, block.hash, block.token_ids) for b in order
                  if (block := self.blocks[b]).hash is not None and block.token_ids is not None]
        self.tiers.plan_flush(cached)  # type: ignore[arg-type]
        return self.take_transfers()

    def resolve_prefix(self, block_hashes: list[int]) -> list[int]:
        """Block ids still caching the leading run of `block_hashes` (used to pin a finished turn); with a
        sliding window, NULL_BLOCK for the blocks before the last window of the longest usable run."""
        if self.sliding_window is not None:
            return self._window_hits([self.hash_to_block.get(h) for h in block_hashes])
        block_ids = []
        for block_hash in block_hashes:
            block_id = self.hash_to_block.get(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids

    # ---- allocation ---------------------------------------------------------------------------

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"double free of block {block_id}"
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_queue[block_id] = None
            if block.hash is None:  # nothing reusable in it: first to go
                self.free_queue.move_to_end(block_id, last=False)

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            if self.tiers:
                assert block.token_ids is not None
                self.tiers.save_evicted(block_id, block.hash, block.token_ids)
            block.hash = block.token_ids = None
        block.ref_count = 1
        return block_id

    def allocate_slots(self, seq: Sequence, num_new_tokens: int,
                       cached_blocks: list[int] | None = None, reclaim_pins: bool = True,
                       num_lookahead_tokens: int = 0, loaded: list[TierSlot] | None = None) -> bool:
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
        needed = -(-total_tokens // self.block_size) - len(seq.block_table) - len(cached_blocks)
        held = [b for b in cached_blocks if b != NULL_BLOCK]
        for b in held:  # taken first, so reclaiming pins cannot evict the hits
            self._take(b)
        if needed > self.num_free_blocks and not (reclaim_pins and self._reclaim(needed)):
            for b in held:
                self._release(b)
            return False
        if starting:
            self.prefix_query_tokens += seq.num_tokens
            self.prefix_hit_tokens += len(cached_blocks) * self.block_size
            self.pins.counters.hit_tokens += self.block_size * sum(1 for b in held if b in self.pins.holders)
            seq.block_table.extend(cached_blocks)
            seq.num_released_blocks = len(cached_blocks) - len(held)
            self._load_from_tiers(seq, loaded)
            needed -= len(loaded)
            seq.num_computed_tokens = num_hits * self.block_size
            seq.num_registered_blocks = num_hits
        for _ in range(max(needed, 0)):
            seq.block_table.append(self._pop_free())
        self.register_computed(seq, seq.num_computed_tokens + num_new_tokens)
        return True

    def _release_slid_out(self, seq: Sequence) -> None:
        """Release the blocks no later query of `seq` reads: they slid out of the window."""
        first = min(self.first_needed_block(seq.num_computed_tokens), len(seq.block_table))
        for i in range(seq.num_released_blocks, first):
            block_id = seq.block_table[i]
            if block_id != NULL_BLOCK:
                self._release(block_id)
                seq.block_table[i] = NULL_BLOCK
        seq.num_released_blocks = max(seq.num_released_blocks, first)

    def _load_from_tiers(self, seq: Sequence, loaded: list[TierSlot]) -> None:
        """Fresh blocks for the prefix the host or disk tier holds after `seq`'s GPU hits, published at
        once: their copies run before anything in the step reads them."""
        bs = self.block_size
        for hit in loaded:
            block_id = self._pop_free()  # its own block, if cached, is saved first: the copies keep order
            i = len(seq.block_table)
            block = self.blocks[block_id]
            block.hash, block.token_ids = seq.block_hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs])
            self.hash_to_block.setdefault(block.hash, block_id)
            self.tiers.load(hit, block_id, bs)
            seq.block_table.append(block_id)

    def reserve(self, seq: Sequence, num_tokens: int) -> None:
        """Blocks for `num_tokens` from the free queue, as single decode steps would have taken them;
        the caller checked they are free. Their hashes are published once the tokens exist."""
        needed = -(-num_tokens // self.block_size) - len(seq.block_table)
        assert needed <= self.num_free_blocks
        for _ in range(needed):
            seq.block_table.append(self._pop_free())

    def register_computed(self, seq: Sequence, num_tokens: int) -> None:
        """Publish blocks that are full once `num_tokens` are computed, so later requests can hit them."""
        num_full = num_tokens // self.block_size
        if num_full <= seq.num_registered_blocks or not self.enable_prefix_caching:
            return
        bs = self.block_size
        self._ensure_hashes(seq, num_full)
        for i in range(seq.num_registered_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            block_hash = seq.block_hashes[i]
            if block.hash is None and block_hash not in self.hash_to_block:
                block.hash = block_hash
                block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self.hash_to_block[block_hash] = block.block_id
        seq.num_registered_blocks = max(seq.num_registered_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        # Tail blocks are the least likely to be shared: they enter the free queue first.
        for block_id in reversed(seq.block_table):
            if block_id != NULL_BLOCK:
                self._release(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = seq.num_released_blocks = 0

    def reset_prefix_cache(self) -> int:
        """Forget every cached prefix, pinned or in a slower tier, so that no later request reuses KV
        computed before now (engine/weight_updates.py: the weights changed). Blocks requests hold stay
        theirs, unshared. Returns the blocks forgotten."""
        for key in list(self.pins.pins):
            self._drop_pin(key, evicted=True)
        forgotten = len(self.hash_to_block)
        self.hash_to_block.clear()
        for block in self.blocks:
            if block.hash is not None:
                block.hash = block.token_ids = None
                if block.ref_count == 0:  # nothing reusable in it any more: first to go
                    self.free_queue.move_to_end(block.block_id, last=False)
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
        )
