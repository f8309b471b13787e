"""Engines over models that mix sliding-window and full-attention layers keep their sliding layers' KV in groups
of their own (engine/kv_groups.py): tiny random gpt-oss (sliding, full, sliding, full) and Gemma 3 (five sliding
layers, then a full one) checkpoints saved by transformers, windows of 8 tokens over blocks of 4, answer greedily
as transformers' `generate` through contexts several windows long, chunked prefill, batches, prefix-cache hits
and preemption, while a long request holds about a window of blocks in each sliding group."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import NULL_BLOCK, Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.gpt_oss_checkpoints import save_gpt_oss
from tests.engine.hf_checkpoints import random_prompt, save_hf_model, transformers_greedy

BS, WINDOW, CHUNK = 4, 8, 8
WINDOW_BLOCKS = -(-(WINDOW + CHUNK) // BS) + 1  # what a sliding group holds at most: a window and a chunk
MODELS = ("gpt_oss", "gemma3")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hybrid_kv")
    return {"gpt_oss": save_gpt_oss(root / "gpt_oss"), "gemma3": save_hf_model("gemma3_5to1", root / "gemma3")}


def _engine(model_dir: Path, blocks: int, hybrid: bool = True, **config: object) -> LLMEngine:
    engine_config = EngineConfig(block_size=BS, num_blocks=blocks, max_model_len=256, max_num_seqs=4,
                                 long_prefill_token_threshold=CHUNK, max_num_batched_tokens=64, **config)  # type: ignore[arg-type]
    return LLMEngine(engine_config, TorchModelRunner(model_dir, blocks, BS, device="cpu", hybrid_kv_cache=hybrid))


def _held(seq: Sequence, group: int) -> int:
    return sum(1 for b in seq.block_tables[group] if b != NULL_BLOCK)


def _run(engine: LLMEngine, prompts: dict[str, list[int]], new_tokens: int) -> dict[str, Sequence]:
    """Every prompt to its end, checking at each step that the sliding groups hold a window at most, the full
    groups every block, and the stats count exactly the blocks the requests and pins hold."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    seqs = {name: engine.add_request(name, prompt, params) for name, prompt in prompts.items()}
    slides = engine.block_manager.group_slides
    while engine.has_unfinished():
        engine.step()
        running = engine.scheduler.running
        for seq in running:
            assert len(seq.block_tables) == len(slides)
            for group, sliding in enumerate(slides):
                assert _held(seq, group) <= WINDOW_BLOCKS if sliding else _held(seq, group) == len(seq.block_table)
        held = {b for seq in running for table in seq.block_tables for b in table if b != NULL_BLOCK}
        assert len(held) == sum(_held(s, g) for s in running for g in range(len(slides)))  # no block in two places
        assert engine.stats().blocks.used == len(held | set(engine.block_manager.pins.holders))
    return seqs


@pytest.mark.parametrize("model", MODELS)
def test_a_context_of_several_windows_generates_as_transformers_in_a_cache_the_old_layout_cannot_hold(
        models: dict[str, Path], model: str) -> None:
    prompt = random_prompt(30, seed=11)
    expected = transformers_greedy(models[model], prompt, 40)
    runner = TorchModelRunner(models[model], 8, BS, device="cpu")
    assert runner.kv_groups is not None
    old_blocks = 16  # 64 tokens of every layer: the old layout cannot hold the request's 70
    blocks = old_blocks * runner.config.num_layers // runner.kv_groups.group_size  # as many bytes
    engine = _engine(models[model], blocks)
    assert engine.config.max_model_len >= 70
    assert _engine(models[model], old_blocks, hybrid=False).config.max_model_len == old_blocks * BS < 70
    seq = _run(engine, {"long": prompt}, 40)["long"]
    assert seq.output_token_ids == expected


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_and_a_prefix_hit_answer_as_transformers(models: dict[str, Path], model: str) -> None:
    """Four prompts of different lengths prefill in chunks and decode together; a fifth shares the third's
    first 36 tokens and takes them from the cache: every block of the full group, the window of the others."""
    prompts = {f"s{i}": random_prompt(length, seed) for i, (seed, length) in enumerate(((1, 5), (2, 23), (3, 40), (4, 11)))}
    engine = _engine(models[model], 160)
    got = _run(engine, prompts, 12)
    for name, prompt in prompts.items():
        assert got[name].output_token_ids == transformers_greedy(models[model], prompt, 12), name
    shared = prompts["s2"][:36] + random_prompt(9, seed=9)
    again = _run(engine, {"hit": shared}, 12)["hit"]
    assert again.num_cached_tokens == 36
    assert again.output_token_ids == transformers_greedy(models[model], shared, 12)


@pytest.mark.parametrize(("model", "blocks"), [("gpt_oss", 36), ("gemma3", 70)])
def test_requests_preempted_from_a_small_cache_answer_as_transformers(models: dict[str, Path], model: str,
                                                                     blocks: int) -> None:
    prompts = {f"p{i}": random_prompt(20, seed=20 + i) for i in range(3)}
    engine = _engine(models[model], blocks)
    got = _run(engine, prompts, 30)
    assert engine.scheduler.num_preemptions > 0
    for name, prompt in prompts.items():
        assert got[name].output_token_ids == transformers_greedy(models[model], prompt, 30), name


def test_ngram_drafts_are_checked_across_the_groups(models: dict[str, Path]) -> None:
    """Speculative decoding's lookahead blocks are taken in every group, and rejected drafts' KV overwritten."""
    prompt = (random_prompt(6, seed=31) * 5)[:28]
    spec = SpeculativeConfig(method="ngram", num_speculative_tokens=3, prompt_lookup_min=1, prompt_lookup_max=2)
    engine = _engine(models["gpt_oss"], 64, speculative=spec)
    seq = _run(engine, {"spec": prompt}, 24)["spec"]
    assert engine.spec.draft_tokens > 0
    assert seq.output_token_ids == transformers_greedy(models["gpt_oss"], prompt, 24)


def test_a_sessions_pin_holds_the_full_prefix_and_the_last_window(models: dict[str, Path]) -> None:
    """A finished turn's pin holds every full-group block and the sliding group's last window; a request that
    cycles the whole rest of the cache through evicts the rest, and the next turn still finds its prefix."""
    from gateway.session_pins import view_from_stats

    engine = _engine(models["gpt_oss"], 96)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    first = engine.add_request("t1", random_prompt(40, seed=5), params, session_id="agent", pin_ttl_s=60.0)
    while engine.has_unfinished():
        engine.step()
    info = engine.session_info("agent")
    assert info is not None and info["cached_tokens"] == 44  # 45 tokens computed: 11 full blocks
    assert info["pinned_blocks"] == 11 + 2  # from position 44 the window reads blocks 9 and 10
    assert info["pinned_tokens"] == 44  # the prefix a next turn finds, not the blocks times their size
    _run(engine, {"filler": random_prompt(180, seed=6)}, 4)
    second = engine.add_request("t2", first.token_ids + [7, 8, 9], params, session_id="agent")
    while engine.has_unfinished():
        engine.step()
    assert second.num_cached_tokens == 44
    assert second.output_token_ids == transformers_greedy(models["gpt_oss"], first.token_ids + [7, 8, 9], 6)
    stats = engine.stats()
    assert stats.blocks.kv_groups == 2  # as the gateway reads it: a block of each group per 4 tokens
    view = view_from_stats({"block_size": BS, "blocks": {"total": 96, "used": 0, "pinned": 13, "kv_groups": 2}})
    assert view.capacity_tokens == 96 * BS // 2 and view.pinned_tokens == 13 * BS // 2
