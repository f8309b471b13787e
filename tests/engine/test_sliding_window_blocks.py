"""A model whose every layer slides (Mistral-7B-v0.1's kind) holds about a window of KV per request: blocks
that slid out are released as it goes, a prefix is reused from its last window's blocks, a session pin
holds that window, and steps are priced on the keys a query reads. Generation through a cache smaller
than the context is transformers' own."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.batch import ScheduledBatch
from engine.block_manager import NULL_BLOCK, BlockManager
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import random_prompt, save_hf_model, transformers_greedy

BS, WINDOW = 4, 8


def _seq(request_id: str, tokens: list[int]) -> Sequence:
    return Sequence(request_id, tokens, SamplingParams(max_tokens=1), 0.0)


def _compute(bm: BlockManager, seq: Sequence, chunk: int = 4) -> None:
    """Run `seq`'s prompt through the block manager as steps of `chunk` tokens would."""
    cached = bm.match_prefix(seq)
    assert bm.allocate_slots(seq, min(chunk, seq.num_tokens - len(cached) * BS), cached)
    seq.num_computed_tokens += min(chunk, seq.num_tokens - len(cached) * BS)
    while seq.num_computed_tokens < seq.num_tokens:
        n = min(chunk, seq.num_tokens - seq.num_computed_tokens)
        assert bm.allocate_slots(seq, n)
        seq.num_computed_tokens += n


def test_blocks_that_slid_out_are_released_and_stay_cached() -> None:
    bm = BlockManager(64, BS, sliding_window=WINDOW)
    seq = _seq("a", list(range(1, 41)))
    _compute(bm, seq)
    assert bm.allocate_slots(seq, 1)  # the next step: its query at position 40 reads keys 33..40
    first_needed = (40 - WINDOW + 1) // BS
    assert seq.block_table[:first_needed] == [NULL_BLOCK] * first_needed
    assert NULL_BLOCK not in seq.block_table[first_needed:]
    held = bm.num_blocks - bm.num_free_blocks
    assert held == len(seq.block_table) - first_needed <= -(-(WINDOW + BS) // BS) + 1
    assert bm.stats().cached_free == first_needed  # released, still hashed: a later prompt can hit them
    bm.free(seq)
    assert bm.num_free_blocks == bm.num_blocks


def _lose_early_blocks(bm: BlockManager, last_token: int) -> None:
    """The cache reused the blocks holding tokens up to `last_token` for something else."""
    for block in bm.blocks:
        if block.hash is not None and block.token_ids is not None and block.token_ids[0] <= last_token:
            bm.hash_to_block.pop(block.hash)
            block.hash = block.token_ids = None


def test_a_prefix_is_reused_from_its_last_window() -> None:
    turn = list(range(1, 41))
    managers = {"window": BlockManager(64, BS, sliding_window=WINDOW), "whole": BlockManager(64, BS)}
    for bm in managers.values():
        first = _seq("t1", turn)
        _compute(bm, first)
        bm.free(first)
        _lose_early_blocks(bm, 20)  # blocks 0-4 lost; 5-9 (tokens 21-40) kept
    later = _seq("t2", turn + [99, 98, 97])
    hits = managers["window"].match_prefix(later)
    # Its first token to compute is at position 40: its window reads keys 33..40, blocks 8 and 9.
    assert len(hits) == 10 and hits[:8] == [NULL_BLOCK] * 8 and NULL_BLOCK not in hits[8:]
    assert managers["window"].allocate_slots(later, 3, hits)
    assert later.num_computed_tokens == 40 and later.num_released_blocks == 8
    # Without a window, the lost first block ends the prefix.
    assert managers["whole"].match_prefix(_seq("t3", turn + [99, 98, 97])) == []


def test_steps_are_priced_on_the_keys_a_query_reads() -> None:
    seq = _seq("a", list(range(100)))
    seq.num_computed_tokens = 90
    seq.token_ids.append(5)
    windowed, whole = ScheduledBatch(block_size=BS, attention_window=WINDOW), ScheduledBatch(block_size=BS)
    for batch in (windowed, whole):
        batch.add(seq, 1)
    assert windowed.shape.kv_tokens == WINDOW and whole.shape.kv_tokens == 91


@pytest.fixture(scope="module")
def mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_model("mistral_sliding", tmp_path_factory.mktemp("mistral") / "m")  # an 8-token window


def test_a_context_longer_than_the_cache_generates_as_transformers(mistral: Path) -> None:
    prompt = random_prompt(30)
    expected = transformers_greedy(mistral, prompt, 90)
    config = EngineConfig(block_size=BS, num_blocks=12, max_model_len=256, long_prefill_token_threshold=8,
                          max_num_batched_tokens=64, max_num_seqs=4)
    engine = LLMEngine(config, TorchModelRunner(mistral, 12, BS, device="cpu"))
    assert engine.config.attention_window == WINDOW and engine.block_manager.sliding_window == WINDOW
    seq = engine.add_request("long", prompt, SamplingParams(temperature=0, max_tokens=90, ignore_eos=True))
    peak = 0
    while engine.has_unfinished():
        engine.step()
        peak = max(peak, engine.block_manager.num_blocks - engine.block_manager.num_free_blocks)
    assert seq.output_token_ids == expected  # 120 tokens of context through 48 tokens of cache
    assert peak <= 6
    # The ablation keeps every block: the same context does not fit its cache.
    kept = LLMEngine(EngineConfig(block_size=BS, num_blocks=12, max_model_len=256, release_slid_out_blocks=False),
                     TorchModelRunner(mistral, 12, BS, device="cpu"))
    assert kept.block_manager.sliding_window is None and kept.config.max_model_len == 48


def test_a_sessions_next_turn_finds_its_window(mistral: Path) -> None:
    config = EngineConfig(block_size=BS, num_blocks=32, max_model_len=256, long_prefill_token_threshold=8,
                          max_num_batched_tokens=64)
    engine = LLMEngine(config, TorchModelRunner(mistral, 32, BS, device="cpu"))
    prompt = random_prompt(40, seed=5)
    first = engine.add_request("t1", prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                               session_id="agent", pin_ttl_s=60.0)
    while engine.has_unfinished():
        engine.step()
    info = engine.session_info("agent")
    assert info is not None and info["cached_tokens"] == (len(first.token_ids) - 1) // BS * BS
    assert 0 < info["pinned_blocks"] <= -(-WINDOW // BS) + 1  # the pin holds the window, not the whole turn
    second = engine.add_request("t2", first.token_ids + [7, 8, 9],
                                SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), session_id="agent")
    while engine.has_unfinished():
        engine.step()
    assert second.num_cached_tokens == info["cached_tokens"]
    expected = transformers_greedy(mistral, first.token_ids + [7, 8, 9], 4)
    assert second.output_token_ids == expected


def test_a_sliding_window_profile_serves_a_simulated_engine_that_releases(tmp_path: Path) -> None:
    from engine.build import build_engine
    from engine.roofline import RooflineStepTime
    from engine.step_time import load_profile, save_profile

    save_profile(tmp_path / "mistral.json", RooflineStepTime.builtin("mistral-7b-v0.1"))
    loaded = load_profile(tmp_path / "mistral.json")
    assert isinstance(loaded, RooflineStepTime) and loaded.model.sliding_window == 4096
    engine = build_engine(sim_profile=tmp_path / "mistral.json").engine
    assert engine.config.attention_window == 4096 and engine.block_manager.sliding_window == 4096
    save_profile(tmp_path / "llama.json", RooflineStepTime.builtin("llama-3.1-8b"))
    assert build_engine(sim_profile=tmp_path / "llama.json").engine.config.attention_window is None
