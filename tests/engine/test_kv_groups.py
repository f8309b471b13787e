"""KV groups for models mixing sliding-window and full-attention layers (engine/kv_groups.py): the layout vLLM's
hybrid manager picks, and the block manager's groups over one pool: a full group keeps every block, a sliding
group releases what left its window, a prefix is reused when the full group has all of it and each sliding group
its last window, and a pin holds what such a hit needs."""

from __future__ import annotations

from engine.block_manager import NULL_BLOCK, BlockManager
from engine.kv_groups import kv_group_layout
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BS, WINDOW = 4, 8
FULL, SLIDING = 0, 1


def test_layers_are_grouped_by_kind_in_groups_of_the_smaller_count() -> None:
    gpt_oss = kv_group_layout(4, (0, 2), 128)
    assert gpt_oss is not None and gpt_oss.groups == ((1, 3), (0, 2)) and gpt_oss.slides == (False, True)
    assert gpt_oss.layer_places(4) == [(1, 0), (0, 0), (1, 1), (0, 1)]
    gemma3 = kv_group_layout(12, tuple(i for i in range(12) if i % 6 != 5), 1024)  # 5:1
    assert gemma3 is not None and gemma3.group_size == 2 and gemma3.slides == (False,) + (True,) * 5
    assert gemma3.groups[0] == (5, 11) and gemma3.groups[1:] == ((0, 1), (2, 3), (4, 6), (7, 8), (9, 10))
    gemma3_27b = kv_group_layout(62, tuple(i for i in range(62) if i % 6 != 5), 1024)  # 52 sliding, 10 full
    assert gemma3_27b is not None and gemma3_27b.group_size == 10 and gemma3_27b.num_groups == 1 + 6
    assert len(gemma3_27b.groups[-1]) == 2  # the last sliding group's other 8 slots are padding
    assert kv_group_layout(4, (0, 1, 2, 3), 8) is None and kv_group_layout(4, (), None) is None


def _seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id, tokens, SamplingParams(max_tokens=1), 0.0)


def _manager(num_blocks: int = 64) -> BlockManager:
    return BlockManager(num_blocks, BS, sliding_window=WINDOW, kv_groups=(False, True))


def _compute(bm: BlockManager, seq: Sequence, chunk: int = 4) -> None:
    cached = bm.match_prefix(seq)
    first = min(chunk, seq.num_tokens - len(cached) * BS)
    assert bm.allocate_slots(seq, first, cached)
    seq.num_computed_tokens += first
    while seq.num_computed_tokens < seq.num_tokens:
        n = min(chunk, seq.num_tokens - seq.num_computed_tokens)
        assert bm.allocate_slots(seq, n)
        seq.num_computed_tokens += n


def test_the_full_group_keeps_every_block_and_the_sliding_group_a_window() -> None:
    bm = _manager()
    seq = _seq("a", list(range(1, 41)))
    _compute(bm, seq)
    assert bm.allocate_slots(seq, 1)  # its query at position 40 reads keys 33..40: blocks 8 and 9
    full, sliding = seq.block_tables
    assert len(full) == len(sliding) == 11 and NULL_BLOCK not in full
    assert sliding[:8] == [NULL_BLOCK] * 8 and NULL_BLOCK not in sliding[8:]
    assert not set(full) & set(sliding[8:])  # one pool, no block in two tables
    assert bm.num_blocks - bm.num_free_blocks == 11 + 3
    assert bm.stats().cached_free == 8  # released, still cached for a later prompt
    bm.free(seq)
    assert bm.num_free_blocks == bm.num_blocks


def _lose(bm: BlockManager, group: int, last_token: int, first_token: int = 0) -> None:
    """The cache reused `group`'s blocks holding tokens `first_token`..`last_token` for something else."""
    for block in bm.blocks:
        if block.group == group and block.hash is not None and block.token_ids is not None \
                and first_token <= block.token_ids[0] <= last_token:
            bm.cached_blocks[group].pop(block.hash)
            block.hash = block.token_ids = None


def _finished_turn(bm: BlockManager, turn: list[int]) -> None:
    first = _seq("t1", turn)
    _compute(bm, first)
    bm.free(first)


def test_a_prefix_hit_needs_the_full_groups_blocks_and_the_sliding_groups_last_window() -> None:
    turn = list(range(1, 41))
    bm = _manager()
    _finished_turn(bm, turn)
    _lose(bm, SLIDING, 20)  # the sliding group's early blocks are gone: not read from position 40
    later = _seq("t2", turn + [99, 98, 97])
    hits = bm.match_prefix(later)
    assert len(hits) == 10 and NULL_BLOCK not in hits
    assert bm.allocate_slots(later, 3, hits)
    full, sliding = later.block_tables
    assert full[:10] == hits and sliding[:8] == [NULL_BLOCK] * 8 and NULL_BLOCK not in sliding[8:]
    assert later.num_computed_tokens == 40 and later.num_released_blocks == 8
    bm.free(later)
    _lose(bm, FULL, 5, first_token=5)  # the full group's second block (tokens 5-8): the first block alone is left
    assert bm.match_prefix(_seq("t3", turn + [99])) == []  # and its window (block 0) left the sliding group


def test_a_lost_window_block_shortens_the_hit_to_the_last_usable_length() -> None:
    turn = list(range(1, 41))
    bm = _manager()
    _finished_turn(bm, turn)
    _lose(bm, SLIDING, 37, first_token=37)  # block 9 of the sliding group (tokens 37-40)
    hits = bm.match_prefix(_seq("t2", turn + [99]))
    # From position 36 (9 blocks) the window reads blocks 7 and 8, both cached.
    assert len(hits) == 9


def test_admission_counts_a_window_for_the_sliding_group() -> None:
    bm = _manager()
    seq = _seq("long", list(range(1, 201)))
    # 50 blocks for the full group; for the sliding one, a window and a 16-token chunk: 6 blocks, 7 unaligned.
    assert bm.blocks_to_start(seq, [], max_chunk=16) == 50 + 7
    assert bm.max_context_tokens(max_chunk=16) == (64 - 7) * BS
    assert BlockManager(64, BS, kv_groups=(False, True)).max_context_tokens(16) == 32 * BS  # no release: halves


def test_a_pin_holds_the_full_prefix_and_the_last_window() -> None:
    bm = _manager()
    bm.pin_budget_blocks = 64
    seq = _seq("t1", list(range(1, 41)))
    _compute(bm, seq)
    bm.register_computed(seq, 40)
    pinned, prefix_blocks = bm.pinnable_prefix(seq.block_hashes)
    bm.free(seq)
    assert bm.num_cached_prefix_blocks(seq.block_hashes) == prefix_blocks == 10
    # Ten full-group blocks; the sliding group's window from position 40: blocks 8 and 9.
    assert bm.pin("s", pinned, 60.0, 0.0, prefix_blocks * BS) == 12
    assert bm.pins.pins["s"].num_tokens == 40
    for _ in range(bm.num_free_blocks):  # everything else is taken: the pin's blocks are not
        bm._pop_free()
    hits = bm.match_prefix(_seq("t2", list(range(1, 41)) + [7]))
    assert len(hits) == 10


def test_a_pin_over_the_budget_keeps_a_shorter_prefix_with_its_window() -> None:
    """A pin larger than the budget is shortened as a whole: the full group's first blocks with the sliding
    group's window before them, not the full group's blocks alone (a prefix no group can go on from)."""
    bm = _manager()
    bm.pin_budget_blocks = 8
    seq = _seq("t1", list(range(1, 41)))
    _compute(bm, seq)
    bm.register_computed(seq, 40)
    pinned, prefix_blocks = bm.pinnable_prefix(seq.block_hashes)
    bm.free(seq)
    # 6 full-group blocks (24 tokens) and the sliding group's blocks 4 and 5, which a query at 24 reads.
    assert (len(pinned), prefix_blocks) == (8, 6)
    assert bm.pin("s", pinned, 60.0, 0.0, prefix_blocks * BS) == 8
    for _ in range(bm.num_free_blocks):
        bm._pop_free()
    assert len(bm.match_prefix(_seq("t2", list(range(1, 41)) + [7]))) == 6
