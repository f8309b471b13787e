"""The disk KV tier's decisions and files: the table (LRU, token check, busy slots), the block manager's
plans (GPU -> host -> disk, disk -> GPU, the flush before a clean shutdown), the index file (fingerprint,
checksum, atomic replace) and one rank's store (queued writes read back, only completed writes indexed or
trusted, a folder one engine at a time)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.block_manager import BlockManager
from engine.disk_cache import DiskEntry, DiskKVCache
from engine.disk_index import IndexUnusable, read_index, write_index
from engine.disk_store import DiskKVStore
from engine.kv_transfer import DISK, HOST, HOST_TO_DISK, KVTransfer, TierSlot
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BS = 4


def _seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id, tokens, SamplingParams(max_tokens=4), 0.0)


def _fill(bm: BlockManager, seq: Sequence) -> None:
    assert bm.allocate_slots(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens


# ---- the table -------------------------------------------------------------------------------


def test_disk_table_saves_once_checks_tokens_and_reuses_least_recent_idle_slots() -> None:
    disk = DiskKVCache(2)
    disk.save(7, 10, (1, 2))
    disk.save(8, 10, (1, 2))  # already there: touched, not copied again
    disk.save(9, 11, (3, 4))
    assert disk.take_transfers() == [KVTransfer(True, 7, 0, DISK, 10), KVTransfer(True, 9, 1, DISK, 11)]
    assert disk.lookup(10, (1, 3)) is None  # a hash collision is not a hit
    assert disk.lookup(10, (1, 2)) == 0  # now the most recent, and busy until the step's copies are taken
    disk.load(0, 5)
    disk.save(3, 12, (5, 6))  # evicts 11, the least recent idle slot
    assert 11 not in disk and disk.slot_of[12] == 1
    disk.save(4, 13, (7, 8))  # both slots busy this step: skipped
    assert 13 not in disk and disk.stats().skipped_saves == 1
    assert disk.take_transfers() == [KVTransfer(False, 5, 0, DISK), KVTransfer(True, 3, 1, DISK, 12)]
    stats = disk.stats()
    assert (stats.used, stats.saved_blocks, stats.loaded_blocks, stats.evicted_blocks) == (2, 3, 1, 1)


def test_entries_leave_out_saves_not_yet_handed_over_and_restore_takes_them_back() -> None:
    disk = DiskKVCache(4)
    disk.save(0, 10, (1,))
    disk.take_transfers()
    disk.save(1, 11, (2,))  # queued: its write has not even started
    assert disk.entries() == [DiskEntry(0, 10, (1,))]
    disk.take_transfers()
    assert [e.block_hash for e in disk.entries()] == [10, 11]
    again = DiskKVCache(3)
    again.restore([DiskEntry(2, 11, (2,)), DiskEntry(0, 10, (1,)), DiskEntry(5, 12, (3,)), DiskEntry(0, 13, (4,))])
    # Out of range and a slot claimed twice are dropped; recency is kept.
    assert list(again.slot_of.items()) == [(11, 2), (10, 0)] and again.stats().restored_blocks == 2
    again.save(9, 14, (5,))
    again.save(9, 15, (6,))  # the only free slot went to 14: 11, the least recent, makes room
    assert again.slot_of[14] == 1 and again.slot_of[15] == 2 and 11 not in again


def test_disk_blocks_are_read_ahead_before_a_request_loads_them_within_a_budget() -> None:
    disk = DiskKVCache(8, read_ahead_blocks=2)
    for i in range(6):
        disk.save(i, 10 + i, (i,))
    disk.take_transfers()
    assert not disk.ready([0, 1])  # asked for: the request waits
    assert disk.take_read_requests() == ([0, 1], []) and not disk.ready([0, 1])  # asked once, still reading
    disk.mark_read([0, 1, 5])  # 5 was never asked for: nothing to mark
    assert disk.ready([0, 1]) and disk.take_read_requests() == ([], [])
    assert disk.lookup(10, (0,)) == 0
    disk.load(0, 7)
    assert disk.take_transfers()[-1] == KVTransfer(False, 7, 0, DISK, ahead=True)
    # Budget 2: slot 1 (read, not loaded) gives way to another request's; one left over loads in its step.
    assert not disk.ready([2, 3, 4])
    assert disk.take_read_requests() == ([2, 3], [1])
    disk.mark_read([2, 3])
    assert disk.ready([2, 3, 4])  # 4 was not read ahead: no room, nothing else being read
    assert disk.lookup(14, (4,)) == 4
    disk.load(4, 6)
    assert disk.take_transfers()[-1].ahead is False
    # A slot reused for another block forgets what was read of it: two free slots, then slots 1 and 2 go.
    for i in range(6, 10):
        disk.save(i, 20 + i, (i,))
    assert disk.take_read_requests() == ([], [2]) and 2 not in disk.read and disk.stats().read_ahead_blocks == 1


def test_a_request_behind_others_waits_for_the_read_budget_instead_of_taking_it_from_them() -> None:
    disk = DiskKVCache(8, read_ahead_blocks=2)
    assert not disk.ready([0, 1])  # the first request takes the whole budget
    assert not disk.ready([2])  # the one behind it waits, asking for nothing
    assert disk.take_read_requests() == ([0, 1], [])
    disk.mark_read([0, 1])
    assert disk.ready([0, 1]) and not disk.ready([2])  # the first asked again this pass: its reads stay
    disk.take_read_requests()
    assert not disk.ready([2])  # a pass where the first did not ask (admitted, or gone): its reads give way
    assert disk.take_read_requests() == ([2], [0])


# ---- the block manager ------------------------------------------------------------------------


def test_gpu_evictions_go_to_disk_without_a_host_tier_and_come_back_from_there() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS, num_disk_blocks=8)
    first = _seq("a", list(range(9)))
    _fill(bm, first)
    blocks = list(first.block_table)
    bm.free(first)
    crowd = _seq("b", list(range(100, 116)))
    _fill(bm, crowd)  # takes all four blocks: the cached ones are written to disk
    saved = bm.take_transfers()
    assert {t.tier for t in saved} == {DISK} and all(t.save for t in saved)
    slot_of = {t.block_id: t.slot for t in saved}
    bm.free(crowd)
    again = _seq("c", list(range(9)) + [50])
    assert bm.match_prefix(again) == []
    hits = bm.match_tiers(again, 0)
    assert hits == [TierSlot(DISK, slot_of[blocks[0]]), TierSlot(DISK, slot_of[blocks[1]])]
    assert bm.allocate_slots(again, again.num_tokens - 2 * BS, [], loaded=hits)
    loads = [t for t in bm.take_transfers() if not t.save]
    assert [(t.tier, t.slot, t.block_id) for t in loads] == [(DISK, h.slot, b) for h, b in zip(hits, again.block_table,
                                                                                           strict=False)]
    assert again.num_computed_tokens == 2 * BS and bm.stats().disk_hit_tokens == 2 * BS
    assert bm.match_prefix(_seq("d", list(range(9)))) == again.block_table[:2]  # GPU prefix-cache blocks again


def test_host_evictions_go_to_disk_before_the_host_slot_is_overwritten() -> None:
    bm = BlockManager(num_blocks=3, block_size=BS, num_host_blocks=1, num_disk_blocks=8)
    a = _seq("a", list(range(5)))  # one full block and one token
    _fill(bm, a)
    bm.free(a)
    b = _seq("b", list(range(100, 112)))  # three blocks: a's block is saved to the host
    _fill(bm, b)
    (to_host,) = [t for t in bm.take_transfers() if t.block_hash == a.block_hashes[0]]
    assert to_host.tier == HOST
    bm.free(b)
    c = _seq("c", list(range(200, 212)))  # b's cached blocks go to the one host slot in turn
    _fill(bm, c)
    transfers = bm.take_transfers()
    demoted = [t for t in transfers if t.tier == HOST_TO_DISK]
    assert [t.block_hash for t in demoted][0] == a.block_hashes[0]
    # Each host-to-disk copy reads the host slot before the save that reuses it is performed.
    for i, t in enumerate(transfers):
        if t.tier == HOST_TO_DISK:
            assert transfers[i + 1] == KVTransfer(True, transfers[i + 1].block_id, t.block_id, HOST,
                                                  transfers[i + 1].block_hash)
    host, disk = bm.host, bm.disk
    assert host is not None and disk is not None and a.block_hashes[0] in disk and a.block_hashes[0] not in host
    bm.free(c)
    # a's block now comes from disk; b's last block (still in host) from the host.
    again = _seq("a2", list(range(5)))
    assert bm.match_tiers(again, 0) == [TierSlot(DISK, disk.slot_of[a.block_hashes[0]])]


def test_a_prefix_split_between_host_and_disk_loads_from_both_in_order() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS, num_host_blocks=2, num_disk_blocks=8)
    prompt = list(range(17))  # four full blocks and one token
    seq = _seq("a", prompt)
    _fill(bm, seq)
    bm.free(seq)
    filler = _seq("f", list(range(100, 116)))
    _fill(bm, filler)  # evicts a's last two full blocks to the host
    bm.take_transfers()
    bm.free(filler)
    other = _seq("g", list(range(300, 308)))
    _fill(bm, other)  # a's first two: the host's two go on to disk
    bm.take_transfers()
    bm.free(other)
    again = _seq("b", prompt)
    assert bm.match_prefix(again) == []
    hits = bm.match_tiers(again, 0)
    assert [h.tier for h in hits] == [HOST, HOST, DISK, DISK]
    assert bm.allocate_slots(again, 1, [], loaded=hits)
    loads = [t for t in bm.take_transfers() if not t.save]
    assert [(t.tier, t.slot) for t in loads] == [tuple(h) for h in hits]
    assert [t.block_id for t in loads] == again.block_table[:4]
    stats = bm.stats()
    assert (stats.host_hit_tokens, stats.disk_hit_tokens) == (2 * BS, 2 * BS)


def test_the_flush_before_shutdown_writes_what_the_gpu_and_host_cache_newest_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS, num_host_blocks=2, num_disk_blocks=3)
    old = _seq("old", list(range(9)))
    _fill(bm, old)
    bm.free(old)
    new = _seq("new", list(range(50, 59)))  # evicts old's second block (a prompt's tail goes first) to the host
    _fill(bm, new)
    bm.take_transfers()
    bm.free(new)
    flush = bm.plan_disk_flush()
    assert all(t.save and t.tier in (DISK, HOST_TO_DISK) for t in flush)
    disk = bm.disk
    assert disk is not None and disk.stats().used == 3  # four cached blocks, three slots: the newest three
    assert all(h in disk for h in (*new.block_hashes, old.block_hashes[0]))  # the GPU's
    assert old.block_hashes[1] not in disk  # the host's, older than all the GPU holds, did not fit
    assert bm.plan_disk_flush() == []  # all there already


# ---- the index file ---------------------------------------------------------------------------


FINGERPRINT = {"model": "abc", "block": [2, 2, BS, 2, 16], "tensor_parallel": (0, 1)}


def test_index_round_trips_and_refuses_another_fingerprint_or_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "kv-rank0.index"
    assert read_index(path, FINGERPRINT, BS) == []  # none yet
    entries = [DiskEntry(3, -(2**63) + 5, (1, 2, 3, 4)), DiskEntry(0, 2**63 - 1, (5, 6, 7, 8))]
    write_index(path, FINGERPRINT, entries, BS)
    assert read_index(path, FINGERPRINT, BS) == entries
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(IndexUnusable, match="block differ"):
        read_index(path, FINGERPRINT | {"block": [2, 2, 8, 2, 16]}, BS)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(IndexUnusable, match="truncated"):
        read_index(path, FINGERPRINT, BS)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IndexUnusable, match="checksum"):
        read_index(path, FINGERPRINT, BS)
    path.write_bytes(b"garbage")
    with pytest.raises(IndexUnusable):
        read_index(path, FINGERPRINT, BS)


# ---- one rank's store -------------------------------------------------------------------------


def _rows(*values: int, width: int = 64) -> np.ndarray:
    return np.array([[v % 256] * width for v in values], dtype=np.uint8)


def test_store_reads_back_writes_queued_or_done_and_indexes_only_completed_ones(tmp_path: Path) -> None:
    store = DiskKVStore(tmp_path, 0, 4, 64, BS, FINGERPRINT)
    release = threading.Event()
    real_write = store._write

    def held(job: object) -> None:
        release.wait(10)
        real_write(job)  # type: ignore[arg-type]

    store._write = held  # type: ignore[method-assign]
    store.write([2, 0], [20, 10], _rows(2, 1))
    assert (store.read([0, 2]) == _rows(1, 2)).all() and store.pending_reads == 2  # from the queued write
    release.set()
    store.flush()
    assert (store.read([2]) == _rows(2)).all() and store.pending_reads == 2  # from the file
    # Slot 3 was never written: an entry for it is not indexed, nor one whose hash is not the slot's.
    store.persist([DiskEntry(0, 10, (1,) * BS), DiskEntry(2, 20, (2,) * BS), DiskEntry(3, 30, (3,) * BS),
                   DiskEntry(2, 99, (9,) * BS)])
    store.flush()
    assert read_index(store.index_path, FINGERPRINT, BS) == [DiskEntry(0, 10, (1,) * BS), DiskEntry(2, 20, (2,) * BS)]
    with pytest.raises(ValueError, match="in use by another engine"):
        DiskKVStore(tmp_path, 0, 4, 64, BS, FINGERPRINT)
    store.read_ahead([0, 2], [])
    store.flush()
    assert sorted(store.take_read_ahead_done()) == [0, 2]
    store.read_ahead([], [2])  # dropped: freed, a load reads the file again
    assert (store.read([0, 2]) == _rows(1, 2)).all() and store.ahead_reads == 1
    store.write([1, 2, 3], [11, 21, 31], _rows(4, 7, 9))  # one call; slot 2 reused after the index: not trusted
    store.flush()
    assert (store.read([3, 1, 2]) == _rows(9, 4, 7)).all()
    store.close()
    reopened = DiskKVStore(tmp_path, 0, 4, 64, BS, FINGERPRINT)
    assert reopened.entries == [DiskEntry(0, 10, (1,) * BS)] and (reopened.read([0, 1]) == _rows(1, 4)).all()
    reopened.close()


def test_a_mismatched_or_damaged_index_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = DiskKVStore(tmp_path, 0, 4, 64, BS, FINGERPRINT)
    store.write([1], [11], _rows(1))
    store.persist([DiskEntry(1, 11, (1,) * BS)])
    store.close()
    with caplog.at_level(logging.WARNING, logger="pitstop.engine"):
        other = DiskKVStore(tmp_path, 0, 4, 64, BS, FINGERPRINT | {"model": "another"})
    assert other.entries == [] and "written by another configuration (model differ)" in caplog.text
    assert not other.index_path.exists() and not other.written.any()  # type: ignore[union-attr]
    other.close()
    (tmp_path / "kv-rank0.index").write_bytes(b"PITSTOP-DISK-KV-INDEX\n{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pitstop.engine"):
        damaged = DiskKVStore(tmp_path, 0, 8, 32, BS, FINGERPRINT)  # resized too: 8 slots of 32 bytes
    assert damaged.entries == [] and "ignoring the index" in caplog.text
    assert (tmp_path / "kv-rank0.bin").stat().st_size == 8 * 32
    damaged.close()
