"""Finding cached prefixes, the prefix-cache half of the block manager (engine/block_manager.py, its base class).

A full block is identified by a hash chain over its tokens and its parent's hash; a hit is checked against
the stored token ids. Each KV group (engine/kv_groups.py) caches its own blocks for the same hashes. A prefix
is usable when the query after it can attend in every group: a full-attention group needs every block of it
cached, a sliding group only the blocks its window reads (NULL_BLOCK for those before them, whatever became
of them), so the longest usable prefix may be shorter than the longest cached one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.group_tiers import TierHit, match_group_tiers
from engine.image_inputs import block_image_keys
from engine.sequence import NULL_BLOCK, Sequence

if TYPE_CHECKING:
    from engine.block_manager import Block
    from engine.kv_tiers import KVTiers

# (group, block index) -> the group's cached block holding it, or None
Lookup = Callable[[int, int], "int | None"]


def chain_hash(parent: int, token_ids: tuple[int, ...], extra_keys: tuple[int, ...] = ()) -> int:
    """Stable across processes (ints and tuples of ints hash alike in every run of one Python version).
    `extra_keys`: the content hashes of the images whose feature tokens the block holds (engine/image_inputs.py),
    and of its prompt-embedding rows (engine/prompt_embeds.py), which its placeholder tokens do not tell apart."""
    return hash((parent, token_ids, extra_keys)) if extra_keys else hash((parent, token_ids))


class PrefixMatch:
    """Needs the block manager's blocks, block size, window, groups and their cached-block maps."""

    block_size: int
    enable_prefix_caching: bool
    sliding_window: int | None  # the sliding groups' window; None: no group releases blocks
    group_slides: tuple[bool, ...]  # each group's: whether it releases the blocks that left the window
    cached_blocks: list[dict[int, int]]  # each group's block hash -> block id
    blocks: list[Block]
    tiers: KVTiers
    # A Mamba-2 hybrid's: of a sequence's hit blocks, how many it may resume over (engine/mamba_sessions.py).
    prefix_limit: Callable[[Sequence, int], int] | None = None

    def _ensure_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        hashes, bs, tokens = seq.block_hashes, self.block_size, seq.token_ids
        for i in range(len(hashes), num_full_blocks):
            parent = hashes[-1] if hashes else seq.hash_seed  # a LoRA adapter's chains start apart
            extra = block_image_keys(seq.images, i * bs, (i + 1) * bs) if seq.images else ()
            if seq.prompt_embeds is not None and i * bs < len(seq.prompt_embeds):  # its rows, not the placeholders
                from engine.prompt_embeds import content_hash  # torch is loaded: the rows are a tensor

                extra = (*extra, content_hash(seq.prompt_embeds[i * bs : (i + 1) * bs]))
            hashes.append(chain_hash(parent, tuple(tokens[i * bs : (i + 1) * bs]), extra))

    def _seq_lookup(self, seq: Sequence) -> Lookup:
        bs = self.block_size

        def lookup(group: int, i: int) -> int | None:
            block_id = self.cached_blocks[group].get(seq.block_hashes[i])
            if block_id is None or self.blocks[block_id].token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                return None
            return block_id
        return lookup

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks covering the longest usable prefix of `seq`, keeping at least one token to compute:
        the first group's (the others' for the same blocks are taken with them: `group_hits`)."""
        if not self.enable_prefix_caching:
            return []
        num_full = (seq.num_tokens - 1) // self.block_size
        self._ensure_hashes(seq, num_full)
        hits = self._hits_by_group(self._seq_lookup(seq), num_full)[0]
        return hits if self.prefix_limit is None else hits[: self.prefix_limit(seq, len(hits))]

    def group_hits(self, seq: Sequence, num_hits: int) -> list[list[int]]:
        """Every group's cached blocks for the `num_hits` blocks `match_prefix` found (nothing changes the
        cache between a match and the allocation that takes them)."""
        if num_hits == 0:
            return [[] for _ in self.group_slides]
        hits = self._hits_by_group(self._seq_lookup(seq), num_hits)
        assert len(hits[0]) == num_hits, "the cache changed between a prefix match and its allocation"
        return hits

    def first_needed_block(self, num_tokens: int) -> int:
        """The first block the window of a query at position `num_tokens` reads (0 without a window)."""
        if self.sliding_window is None:
            return 0
        return max(0, num_tokens - self.sliding_window + 1) // self.block_size

    def _hits_by_group(self, lookup: Lookup, num_blocks: int) -> list[list[int]]:
        """Each group's blocks for the longest prefix of at most `num_blocks` blocks that every group can go
        on from: all of a full group's, and a sliding group's last window (NULL_BLOCK before it)."""
        found: dict[int, list[int | None]] = {}
        length = num_blocks
        for group in (g for g, slides in enumerate(self.group_slides) if not slides):
            hits: list[int | None] = []
            for i in range(length):
                if (block_id := lookup(group, i)) is None:
                    break
                hits.append(block_id)
            found[group], length = hits, min(length, len(hits))
        sliding = [g for g, slides in enumerate(self.group_slides) if slides]
        for group in sliding:
            found[group] = [lookup(group, i) for i in range(length)]
        if sliding:
            length = self._window_length(length, [found[g] for g in sliding])
        first = self.first_needed_block(length * self.block_size) if length else 0
        return [[NULL_BLOCK] * first + found[g][first:length] if slides else found[g][:length]  # type: ignore[misc]
                for g, slides in enumerate(self.group_slides)]

    def _window_length(self, length: int, sliding: list[list[int | None]]) -> int:
        """The longest prefix of at most `length` blocks whose last window every sliding group has cached."""
        best = run_start = 0  # run_start: where the run of blocks cached in every group ending at i starts
        for i in range(length):
            if any(hits[i] is None for hits in sliding):
                run_start = i + 1
            elif run_start <= self.first_needed_block((i + 1) * self.block_size):
                best = i + 1
        return best

    pin_budget_blocks: int

    def pinnable_prefix(self, block_hashes: list[int]) -> tuple[list[int], int]:
        """Every group's blocks still caching the longest usable run of `block_hashes` that fits the pin budget
        (what a pin of a finished turn holds), and that run's length in blocks. With KV groups the run is
        shortened as a whole: cutting the list of blocks would keep full groups' blocks without the sliding
        groups' window that makes them usable."""
        def lookup(group: int, i: int) -> int | None:
            return self.cached_blocks[group].get(block_hashes[i])

        full_groups = max(1, self.group_slides.count(False))
        length = min(len(block_hashes), self.pin_budget_blocks // full_groups)
        while True:
            hits = self._hits_by_group(lookup, length)
            block_ids = list(dict.fromkeys(b for group in hits for b in group if b != NULL_BLOCK))
            if len(block_ids) <= self.pin_budget_blocks or not hits[0]:
                return block_ids, len(hits[0])
            length = len(hits[0]) - 1

    def num_cached_prefix_blocks(self, block_hashes: list[int]) -> int:
        """How many leading blocks of `block_hashes` a next request would take from the cache."""
        hits = self._hits_by_group(lambda g, i: self.cached_blocks[g].get(block_hashes[i]), len(block_hashes))
        return len(hits[0])

    def blocks_to_start(self, seq: Sequence, cached: list[int], max_chunk: int) -> int:
        """Free blocks `seq` takes to run its whole prompt after its `cached` hits (the first group's): each
        full group's for every uncached block, a sliding group's for a window and a chunk at most (its
        blocks are released as it goes), and the hits that now sit in the free queue."""
        bs = self.block_size
        uncached = -(-(seq.num_tokens - len(cached) * bs) // bs)
        window = uncached if self.sliding_window is None else -(-(self.sliding_window + max_chunk) // bs) + 1
        new = sum(min(uncached, window) if slides else uncached for slides in self.group_slides)
        hits = self.group_hits(seq, len(cached)) if len(self.group_slides) > 1 else [cached]
        return new + sum(1 for group in hits for b in group if b != NULL_BLOCK and self.blocks[b].ref_count == 0)

    def match_tiers(self, seq: Sequence, num_gpu_hits: int) -> list[TierHit]:
        """Host or disk slots holding the blocks that follow `seq`'s `num_gpu_hits` GPU hits, keeping at
        least one token to compute. They stay busy until the step's transfers are taken."""
        if not self.tiers:
            return []
        bs = self.block_size
        num_full = (seq.num_tokens - 1) // bs
        self._ensure_hashes(seq, num_full)
        if len(self.group_slides) > 1:  # each group's block (engine/group_tiers.py)
            return match_group_tiers(self, seq, num_gpu_hits, num_full)
        return self.tiers.match(seq.block_hashes, lambda i: tuple(seq.token_ids[i * bs : (i + 1) * bs]),
                                num_gpu_hits, num_full)
