"""The host KV tier: the table's decisions, the block manager's saves and loads, and the torch runner's
copies, which must give the KV (and so the answers) that computing the prefix again gives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.host_cache import HostKVCache
from engine.kv_transfer import KVTransfer, TierSlot
from engine.llm_engine import LLMEngine
from engine.policy import FCFSPolicy
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner

BS = 4


def _seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id, tokens, SamplingParams(max_tokens=4), 0.0)


# ---- the table -------------------------------------------------------------------------------


def test_host_cache_saves_once_and_finds_by_hash_and_tokens() -> None:
    host = HostKVCache(4)
    host.save(7, block_hash=111, token_ids=(1, 2))
    host.save(8, block_hash=111, token_ids=(1, 2))  # already there: no second copy
    assert host.take_transfers() == [KVTransfer(True, 7, 0, block_hash=111)]
    assert host.lookup(111, (1, 3)) is None  # a hash collision is not a hit
    slot = host.lookup(111, (1, 2))
    assert slot == 0
    host.load(slot, 3)
    assert host.take_transfers() == [KVTransfer(False, 3, 0)]
    assert host.stats().saved_blocks == 1 and host.stats().loaded_blocks == 1


def test_host_cache_reuses_least_recent_slots_but_never_busy_ones() -> None:
    host = HostKVCache(2)
    host.save(0, 10, (0,))
    host.save(1, 11, (1,))
    host.take_transfers()
    assert host.lookup(10, (0,)) == 0  # 10 is now the most recent, and busy until the step's copies run
    host.save(2, 12, (2,))  # evicts 11, the least recent
    assert 11 not in host and 10 in host and 12 in host
    host.save(3, 13, (3,))  # both slots busy this step (a load reads one, a save writes the other): skipped
    assert 13 not in host and host.stats().skipped_saves == 1
    assert host.take_transfers() == [KVTransfer(True, 2, 1, block_hash=12)]
    host.save(3, 13, (3,))  # the next step: the least recent is 10 again (12 was saved after it)
    assert 10 not in host and 13 in host and host.stats().evicted_blocks == 2


# ---- the block manager ------------------------------------------------------------------------


def _fill(bm: BlockManager, seq: Sequence) -> None:
    assert bm.allocate_slots(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens


def test_evicted_prefix_is_saved_then_loaded_into_fresh_blocks() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS, num_host_blocks=8)
    first = _seq("a", list(range(9)))  # two full blocks and one token
    _fill(bm, first)
    first_blocks = list(first.block_table)
    bm.free(first)
    assert bm.take_transfers() == []  # freed blocks stay cached on the GPU: nothing to copy yet
    other = _seq("b", list(range(100, 116)))  # takes all four blocks: the cached ones are evicted
    _fill(bm, other)
    saved = bm.take_transfers()
    assert all(t.save and t.tier == "host" for t in saved)
    slot_of = {t.block_id: t.slot for t in saved}  # the tail block is freed, and so evicted, first
    assert sorted(slot_of) == sorted(first_blocks[:2])
    bm.free(other)

    again = _seq("c", list(range(9)) + [50, 51])
    assert bm.match_prefix(again) == []
    hits = bm.match_tiers(again, 0)
    slots = [hit.slot for hit in hits]
    assert hits == [TierSlot("host", slot_of[first_blocks[0]]), TierSlot("host", slot_of[first_blocks[1]])]
    assert bm.allocate_slots(again, again.num_tokens - 2 * BS, [], loaded=hits)
    assert again.num_computed_tokens == 2 * BS and again.num_registered_blocks == 2
    loads = [t for t in bm.take_transfers() if not t.save]
    assert [(t.slot, t.block_id) for t in loads] == [(s, b) for s, b in zip(slots, again.block_table, strict=False)]
    stats = bm.stats()
    assert stats.host_hit_tokens == 2 * BS and stats.prefix_hit_tokens == 0
    # The loaded blocks are GPU prefix-cache blocks again.
    assert bm.match_prefix(_seq("d", list(range(9)))) == again.block_table[:2]


def test_host_hits_follow_gpu_hits_and_keep_one_token_to_compute() -> None:
    bm = BlockManager(num_blocks=6, block_size=BS, num_host_blocks=8)
    seq = _seq("a", list(range(13)))  # three full blocks and one token
    _fill(bm, seq)
    bm.free(seq)
    filler = _seq("f", list(range(200, 216)))  # four blocks: the two unused, the partial one, then a's third
    _fill(bm, filler)
    assert len(bm.take_transfers()) == 1
    bm.free(filler)
    whole = _seq("w", list(range(12)))  # exactly three blocks: the third must be computed, not loaded
    assert len(bm.match_prefix(whole)) == 2 and bm.match_tiers(whole, 2) == []
    same = _seq("b", list(range(13)))
    gpu = bm.match_prefix(same)
    host = bm.match_tiers(same, len(gpu))
    assert len(gpu) == 2 and len(host) == 1
    assert bm.allocate_slots(same, 1, gpu, loaded=host)
    assert same.num_computed_tokens == 12 and same.block_table[:2] == gpu
    assert bm.stats().prefix_hit_tokens == 8 and bm.stats().host_hit_tokens == 4


def test_a_prompt_scored_whole_is_not_loaded_from_the_host() -> None:
    bm = BlockManager(num_blocks=4, block_size=BS, num_host_blocks=8)
    a = _seq("a", list(range(9)))
    _fill(bm, a)
    bm.free(a)
    filler = _seq("b", list(range(100, 116)))
    _fill(bm, filler)
    bm.free(filler)
    config = EngineConfig(block_size=BS, num_blocks=4, max_num_seqs=2, max_num_batched_tokens=64, num_host_blocks=8)
    scheduler = Scheduler(config, bm, FCFSPolicy())
    plain = _seq("p", list(range(9)))
    assert len(bm.match_tiers(plain, 0)) == 2  # found there, for a prompt that is not scored
    scored = Sequence("s", list(range(9)), SamplingParams(max_tokens=1, prompt_logprobs=0), 0.0)
    scheduler.add(scored)
    assert scheduler.schedule(0.0).num_new_tokens == [9]
    assert bm.stats().host_hit_tokens == 0


def test_host_tier_needs_the_prefix_cache() -> None:
    with pytest.raises(ValueError, match="prefix"):
        EngineConfig(num_host_blocks=4, enable_prefix_caching=False)


# ---- the torch runner -------------------------------------------------------------------------


def _engine(model_dir: Path, num_blocks: int, num_host_blocks: int) -> LLMEngine:
    runner = TorchModelRunner(model_dir, num_blocks, BS, device="cpu", num_host_blocks=num_host_blocks)
    config = EngineConfig(block_size=BS, num_blocks=num_blocks, max_num_seqs=4, max_num_batched_tokens=256,
                          max_model_len=num_blocks * BS, num_host_blocks=num_host_blocks)
    return LLMEngine(config, runner)


def _answer(engine: LLMEngine, request_id: str, prompt: list[int]) -> list[int]:
    engine.add_request(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
    return tokens


def test_torch_runner_copies_blocks_both_ways(tiny_model_dir: Path) -> None:
    runner = TorchModelRunner(tiny_model_dir, 4, BS, device="cpu", num_host_blocks=3)
    runner.kv_cache.normal_()
    before = runner.kv_cache.clone()
    runner.transfer_kv([KVTransfer(True, 1, 2), KVTransfer(True, 3, 0)])
    assert torch.equal(runner.host_kv[:, :, 2], before[:, :, 1]) and torch.equal(runner.host_kv[:, :, 0], before[:, :, 3])
    # A save then a load into the block just saved, in one step: the save reads the old contents first.
    runner.transfer_kv([KVTransfer(True, 0, 1), KVTransfer(False, 0, 2)])
    assert torch.equal(runner.host_kv[:, :, 1], before[:, :, 0])
    assert torch.equal(runner.kv_cache[:, :, 0], before[:, :, 1])


def test_reloaded_prefix_holds_the_kv_computing_it_gives(tiny_model_dir: Path) -> None:
    """A prompt's prefix computed, evicted to the host, loaded back: the answer and the prefix's KV are
    those of an engine that never evicted it."""
    rng = random.Random(0)
    shared = [rng.randrange(256) for _ in range(40)]
    filler = [rng.randrange(256) for _ in range(72)]  # with its answer, all 20 blocks
    tiered = _engine(tiny_model_dir, num_blocks=20, num_host_blocks=32)
    _answer(tiered, "warm", shared + [1])
    _answer(tiered, "filler", filler)  # needs every block: the warm prompt's cached blocks go to the host
    assert tiered.stats().blocks.host.saved_blocks >= 10  # type: ignore[union-attr]
    answer = _answer(tiered, "again", shared + [2, 3])
    stats = tiered.stats()
    assert stats.blocks.host_hit_tokens == 40 and stats.blocks.prefix_hit_tokens == 0

    fresh = _engine(tiny_model_dir, num_blocks=64, num_host_blocks=0)
    assert _answer(fresh, "again", shared + [2, 3]) == answer
    seq_blocks = tiered.block_manager.match_prefix(_seq("probe", shared + [9]))
    fresh_blocks = fresh.block_manager.match_prefix(_seq("probe", shared + [9]))
    assert len(seq_blocks) == len(fresh_blocks) == 10
    tiered_kv = tiered.runner.kv_cache[:, :, seq_blocks]  # type: ignore[attr-defined]
    fresh_kv = fresh.runner.kv_cache[:, :, fresh_blocks]  # type: ignore[attr-defined]
    torch.testing.assert_close(tiered_kv, fresh_kv, rtol=1e-5, atol=1e-5)
    assert fresh_kv.abs().sum() > 0


def test_answers_stay_those_of_an_unbounded_cache_under_churn(tiny_model_dir: Path) -> None:
    """Prompts sharing prefixes through a cache of a few blocks: saves, loads and reuse of the same
    blocks and slots in one step all happen; every greedy answer matches a cache that evicts nothing."""
    rng = random.Random(3)
    stems = [[rng.randrange(256) for _ in range(rng.choice((12, 20, 28)))] for _ in range(4)]
    prompts = [rng.choice(stems) + [rng.randrange(256) for _ in range(rng.randrange(1, 9))] for _ in range(24)]
    tiered = _engine(tiny_model_dir, num_blocks=24, num_host_blocks=12)
    reference = _engine(tiny_model_dir, num_blocks=512, num_host_blocks=0)
    for i, prompt in enumerate(prompts):
        assert _answer(tiered, f"r{i}", prompt) == _answer(reference, f"r{i}", prompt), i
    host = tiered.stats().blocks.host
    assert host is not None and host.loaded_blocks > 0 and host.evicted_blocks > 0


def test_engine_refuses_a_host_tier_its_runner_lacks(tiny_model_dir: Path) -> None:
    runner = TorchModelRunner(tiny_model_dir, 8, BS, device="cpu")
    with pytest.raises(ValueError, match="host"):
        LLMEngine(EngineConfig(block_size=BS, num_blocks=8, num_host_blocks=4), runner)


def test_a_returning_turn_holds_its_pin_only_without_a_host_or_disk_tier() -> None:
    assert EngineConfig().arrival_pin_hold_s == 30.0
    assert EngineConfig(num_host_blocks=8).arrival_pin_hold_s == 0.0  # lost while queued: loaded back
    assert EngineConfig(num_disk_blocks=8).arrival_pin_hold_s == 0.0  # lost while queued: read ahead
    assert EngineConfig(num_host_blocks=8, pin_hold_on_arrival_s=5.0).arrival_pin_hold_s == 5.0
