"""Block manager: prefix cache, ref counts, LRU reuse and TTL pins, with a hypothesis state machine."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BS = 4


def make_seq(rid: str, tokens: list[int]) -> Sequence:
    return Sequence(rid, tokens, SamplingParams(max_tokens=8), 0.0)


def start(bm: BlockManager, seq: Sequence) -> bool:
    cached = bm.match_prefix(seq)
    return bm.allocate_slots(seq, seq.num_tokens - len(cached) * BS, cached)


def finish_prefill(seq: Sequence) -> None:
    seq.num_computed_tokens = seq.num_tokens


def test_prefix_hit_reuses_blocks_and_checks_tokens() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    a = make_seq("a", list(range(10)))  # 2 full blocks + 2 tokens
    assert start(bm, a)
    finish_prefill(a)
    b = make_seq("b", list(range(8)) + [99, 98, 97])
    cached = bm.match_prefix(b)
    assert cached == a.block_table[:2]
    assert bm.allocate_slots(b, b.num_tokens - 8, cached)
    assert b.num_computed_tokens == 8
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert bm.stats().prefix_hit_tokens == 8


def test_full_hit_still_computes_last_token() -> None:
    bm = BlockManager(num_blocks=16, block_size=BS)
    a = make_seq("a", list(range(8)))
    assert start(bm, a)
    finish_prefill(a)
    b = make_seq("b", list(range(8)))
    assert len(bm.match_prefix(b)) == 1  # the last block is recomputed so a token can be sampled


def test_hash_collision_is_checked_against_tokens() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS)
    a = make_seq("a", [1, 2, 3, 4, 5])
    assert start(bm, a)
    block = bm.blocks[a.block_table[0]]
    block.token_ids = (9, 9, 9, 9)  # pretend another content shares the hash
    assert bm.match_prefix(make_seq("b", [1, 2, 3, 4, 5])) == []


def test_freed_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    bm = BlockManager(num_blocks=5, block_size=BS)
    a, b = make_seq("a", list(range(5))), make_seq("b", list(range(100, 105)))
    for s in (a, b):
        assert start(bm, s)
        finish_prefill(s)
    a_first, b_first = a.block_table[0], b.block_table[0]
    bm.free(a)
    bm.free(b)
    c = make_seq("c", list(range(200, 205)))  # needs 2 blocks: the unhashed ones go first
    assert start(bm, c)
    assert bm.blocks[a_first].hash is not None and bm.blocks[b_first].hash is not None
    d = make_seq("d", list(range(300, 305)))
    assert start(bm, d)
    assert bm.blocks[a_first].hash is None  # a was freed before b: a's prefix went first
    assert bm.match_prefix(make_seq("b2", list(range(100, 105)))) == [b_first]


def test_pin_survives_pressure_until_running_work_needs_it() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS, pin_budget_blocks=4)
    a = make_seq("a", list(range(9)))
    assert start(bm, a)
    finish_prefill(a)
    assert bm.pin("s1", a.block_table[:2], ttl_s=10, now=0) == 2
    bm.free(a)
    assert bm.stats().pinned == 2
    # 4 free blocks: a request that needs 4 does not touch the pin.
    b = make_seq("b", list(range(50, 66)))
    assert start(bm, b)
    assert bm.stats().pinned == 2
    # One more block than is free: the pin gives way rather than failing.
    c = make_seq("c", list(range(70, 74)))
    assert start(bm, c)
    assert bm.stats().pinned == 0 and bm.pins.counters.evicted == 1


def test_pin_expiry_refresh_and_budget() -> None:
    bm = BlockManager(num_blocks=10, block_size=BS, pin_budget_blocks=3)
    seqs = []
    for i in range(3):
        s = make_seq(f"s{i}", [i * 100 + t for t in range(9)])
        assert start(bm, s)
        finish_prefill(s)
        seqs.append(s)
    assert bm.pin("k0", seqs[0].block_table[:2], ttl_s=5, now=0) == 2
    assert bm.pin("k1", seqs[1].block_table[:1], ttl_s=1, now=0) == 1
    # Budget 3 is full: the new pin pushes out the earliest deadline (k1), keeps k0.
    assert bm.pin("k2", seqs[2].block_table[:1], ttl_s=9, now=0) == 1
    assert "k1" not in bm.pins and "k0" in bm.pins
    assert bm.extend_pin("k0", ttl_s=20, now=4)
    assert bm.expire_pins(now=10) == 1  # k2 (deadline 9) expires, k0 was refreshed to 24
    assert "k0" in bm.pins and "k2" not in bm.pins
    assert bm.expire_pins(now=24) == 1 and len(bm.pins) == 0
    # A pin bigger than the whole budget keeps its leading blocks.
    assert bm.pin("big", seqs[0].block_table + seqs[1].block_table, ttl_s=1, now=0) == 3
    assert bm.pins.pins["big"].block_ids == seqs[0].block_table[:3]


def test_repin_moves_the_pin() -> None:
    bm = BlockManager(num_blocks=8, block_size=BS, pin_budget_blocks=8)
    a = make_seq("a", list(range(9)))
    assert start(bm, a)
    bm.pin("k", a.block_table[:1], ttl_s=5, now=0)
    bm.pin("k", a.block_table[:2], ttl_s=5, now=0)
    assert bm.pins.pins["k"].block_ids == a.block_table[:2]
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert bm.pin("k", a.block_table[:2], ttl_s=0, now=0) == 0  # ttl 0 unpins
    assert bm.blocks[a.block_table[0]].ref_count == 1


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate/append/free/pin/expire sequences keep the books consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManager(num_blocks=12, block_size=BS, pin_budget_blocks=6)
        self.live: dict[str, Sequence] = {}
        self.now = 0.0
        self.n = 0

    @rule(prefix=st.integers(0, 2), extra=st.lists(st.integers(0, 5), min_size=1, max_size=9))
    def allocate(self, prefix: int, extra: list[int]) -> None:
        # Shared prefixes make cache hits likely.
        tokens = [7] * (prefix * BS) + extra
        self.n += 1
        seq = make_seq(f"r{self.n}", tokens)
        if start(self.bm, seq):
            finish_prefill(seq)
            self.live[seq.request_id] = seq
        else:
            assert not seq.block_table

    @precondition(lambda self: self.live)
    @rule(data=st.data(), count=st.integers(1, 6))
    def append(self, data: st.DataObject, count: int) -> None:
        seq = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        for _ in range(count):
            seq.token_ids.append(data.draw(st.integers(0, 5)))
            if not self.bm.allocate_slots(seq, 1):
                seq.token_ids.pop()
                return
            seq.num_computed_tokens += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live)))
        self.bm.free(self.live.pop(rid))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), key=st.sampled_from(["p1", "p2", "p3"]), ttl=st.floats(0, 5))
    def pin(self, data: st.DataObject, key: str, ttl: float) -> None:
        seq = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        self.bm.pin(key, seq.block_table[: seq.num_registered_blocks], ttl, self.now)

    @rule(key=st.sampled_from(["p1", "p2", "p3"]))
    def unpin(self, key: str) -> None:
        self.bm.unpin(key)

    @rule(dt=st.floats(0, 3))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.bm.expire_pins(self.now)
        assert all(p.deadline > self.now for p in self.bm.pins.pins.values())

    @invariant()
    def books_balance(self) -> None:
        bm = self.bm
        expected = [0] * bm.num_blocks
        for seq in self.live.values():
            assert len(set(seq.block_table)) == len(seq.block_table)
            for b in seq.block_table:
                expected[b] += 1
        for pin in bm.pins.pins.values():
            for b in pin.block_ids:
                expected[b] += 1
        assert [b.ref_count for b in bm.blocks] == expected
        assert set(bm.free_queue) == {i for i, r in enumerate(expected) if r == 0}
        assert bm.pins.num_pinned_blocks <= bm.pin_budget_blocks
        for h, b in bm.hash_to_block.items():
            assert bm.blocks[b].hash == h
        # A block held by two sequences must be a shared cached prefix, never a reused private block.
        owners: dict[int, list[Sequence]] = {}
        for seq in self.live.values():
            for i, b in enumerate(seq.block_table):
                owners.setdefault(b, []).append((seq, i))
        for b, held in owners.items():
            if len(held) > 1:
                contents = {tuple(s.token_ids[i * BS:(i + 1) * BS]) for s, i in held}
                assert len(contents) == 1 and bm.blocks[b].token_ids in contents


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
