"""KV groups (engine/kv_groups.py) with the host and disk KV tiers behind them (engine/group_tiers.py): tiny random
gpt-oss (sliding, full, sliding, full) and Gemma 3 (five sliding layers, then a full one) checkpoints saved by
transformers, windows of 8 tokens over blocks of 4 and prompts several windows long. A pinned session that gives
way under memory pressure spills its full groups' blocks and its sliding groups' last window to the host, and its
next turn loads them back and answers as transformers' `generate`; a disk tier's files from another layout are
refused and its own reload after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.group_tiers import group_block_key
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.gpt_oss_checkpoints import save_gpt_oss
from tests.engine.hf_checkpoints import random_prompt, save_hf_model, transformers_greedy

BS, WINDOW, CHUNK, NEW = 4, 8, 8, 6
# A sliding group's blocks a prefix needs at most: those its last query's window reads.
WINDOW_BLOCKS = WINDOW // BS + 1


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kv_groups_tiers")
    return {"gpt_oss": save_gpt_oss(root / "gpt_oss"), "gemma3": save_hf_model("gemma3_5to1", root / "gemma3")}


def _engine(model_dir: Path, blocks: int, host: int = 0, disk: int = 0, folder: Path | None = None,
            hybrid: bool = True, max_num_seqs: int = 2) -> LLMEngine:
    runner = TorchModelRunner(model_dir, blocks, BS, device="cpu", num_host_blocks=host, num_disk_blocks=disk,
                              disk_kv_path=folder, hybrid_kv_cache=hybrid)
    config = EngineConfig(block_size=BS, num_blocks=blocks, max_model_len=128, max_num_seqs=max_num_seqs,
                          num_host_blocks=host,
                          num_disk_blocks=disk, long_prefill_token_threshold=CHUNK, max_num_batched_tokens=64)
    return LLMEngine(config, runner)


def _answer(engine: LLMEngine, request_id: str, prompt: list[int], session: str | None = None) -> Sequence:
    params = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    seq = engine.add_request(request_id, prompt, params, session_id=session, pin_ttl_s=60.0 if session else None)
    while engine.has_unfinished():
        engine.step()
    return seq


def _host_blocks_by_group(engine: LLMEngine, hashes: list[int]) -> list[int]:
    """How many of a prefix's blocks the host tier holds in each KV group."""
    host = engine.block_manager.host
    assert host is not None
    return [sum(1 for h in hashes if group_block_key(h, g) in host) for g in range(len(engine.block_manager.group_slides))]


@pytest.mark.parametrize(("model", "blocks"), [("gpt_oss", 24), ("gemma3", 48)])
def test_a_pinned_session_spilled_to_the_host_comes_back_and_answers_as_transformers(
        models: dict[str, Path], model: str, blocks: int) -> None:
    engine = _engine(models[model], blocks, host=64)
    assert engine.runner.kv_groups is not None  # type: ignore[attr-defined]
    turn = _answer(engine, "t1", random_prompt(34, seed=5), session="agent")
    assert "agent" in engine.block_manager.pins.pins
    hashes = list(engine.sessions["agent"].block_hashes)
    _answer(engine, "filler", random_prompt(60, seed=6))  # needs the pinned blocks: the pin gives way
    assert "agent" not in engine.block_manager.pins.pins and engine.block_manager.pins.counters.evicted == 1
    held = _host_blocks_by_group(engine, hashes)
    slides = engine.block_manager.group_slides
    for group, sliding in enumerate(slides):  # every full-group block, a window of each sliding group's
        assert held[group] <= WINDOW_BLOCKS if sliding else held[group] == len(hashes), (group, held)
    assert sum(held[g] for g, s in enumerate(slides) if s) > 0
    follow_up = turn.token_ids + random_prompt(5, seed=7)
    again = _answer(engine, "t2", follow_up, session="agent")
    stats = engine.stats().blocks
    assert stats.host_hit_tokens == again.num_cached_tokens == len(hashes) * BS  # all of it loaded, none re-prefilled
    assert "agent" in engine.block_manager.pins.pins and not engine.block_manager.spilled_pins  # the new pin's TTL holds
    assert again.output_token_ids == transformers_greedy(models[model], follow_up, NEW)


def test_a_prefix_hit_from_the_host_tier_answers_as_transformers_and_spills_only_the_window(
        models: dict[str, Path]) -> None:
    engine = _engine(models["gemma3"], 48, host=96)
    first = _answer(engine, "first", random_prompt(40, seed=11))  # 45 tokens computed: 11 blocks published
    _answer(engine, "filler", random_prompt(70, seed=12))  # cycles the whole cache: the prefix goes to the host
    saved = engine.stats().blocks.host
    assert saved is not None and saved.saved_blocks > 0
    held = _host_blocks_by_group(engine, first.block_hashes[:11])
    assert held[0] == 11 and all(0 < n <= WINDOW_BLOCKS for n in held[1:]), held  # not 11 blocks of all 6 groups
    # A conversation going on from the whole answer (a session's next turn, unpinned): the windows end there.
    shared = first.token_ids + random_prompt(7, seed=13)
    hit = _answer(engine, "hit", shared)
    assert hit.num_cached_tokens == 44 and engine.stats().blocks.host_hit_tokens == 44
    assert engine.stats().blocks.prefix_hit_tokens == 0
    assert hit.output_token_ids == transformers_greedy(models["gemma3"], shared, NEW)


def test_a_disk_tier_refuses_another_layouts_files_and_reloads_its_own_after_a_restart(
        models: dict[str, Path], tmp_path: Path) -> None:
    model, folder = models["gpt_oss"], tmp_path / "disk"
    prompt = random_prompt(30, seed=21)
    expected = transformers_greedy(model, prompt, NEW)
    whole = _engine(model, 48, disk=64, folder=folder, hybrid=False)  # whole-model blocks: the files before
    assert whole.runner.kv_groups is None  # type: ignore[attr-defined]
    assert _answer(whole, "before", prompt).output_token_ids == expected
    whole.close()
    grouped = _engine(model, 48, disk=64, folder=folder)
    disk = grouped.block_manager.disk
    assert disk is not None and len(disk.slot_of) == 0  # another fingerprint: started empty, nothing misread
    first = _answer(grouped, "grouped", prompt)
    assert first.num_cached_tokens == 0 and first.output_token_ids == expected
    grouped.close()  # the flush writes every group's cached blocks
    restarted = _engine(model, 48, disk=64, folder=folder)
    again = _answer(restarted, "again", prompt)
    assert again.num_cached_tokens == restarted.stats().blocks.disk_hit_tokens == 28
    assert again.output_token_ids == expected
    restarted.close()


def test_a_finished_request_spills_only_its_last_window_of_a_sliding_group() -> None:
    """The block manager alone: a 32-token request freed after one prefill chunk (no step released its slid-out
    blocks) and then evicted gives the host every full-group block and the sliding group's two blocks that the
    window at position 32 reads, each group's under its own key."""
    bm = BlockManager(num_blocks=16, block_size=BS, num_host_blocks=32, sliding_window=WINDOW, kv_groups=(False, True))
    done = Sequence("done", random_prompt(32, seed=31), SamplingParams(max_tokens=4), 0.0)
    assert bm.allocate_slots(done, 32)
    done.num_computed_tokens = 32
    hashes = list(done.block_hashes)
    bm.free(done)
    other = Sequence("other", random_prompt(32, seed=32), SamplingParams(max_tokens=4), 0.0)
    assert bm.allocate_slots(other, 32)  # takes every block: the cached ones are evicted
    host = bm.host
    assert host is not None and len(host.slot_of) == 8 + 2
    assert all(group_block_key(h, 0) in host for h in hashes)
    assert [group_block_key(h, 1) in host for h in hashes] == [False] * 6 + [True] * 2
    bm.take_transfers()  # the step ran: the slots are idle again
    assert host.release(group_block_key(hashes[6], 1))  # the window at 32 loses a block: no length has its window
    again = Sequence("again", done.token_ids + [1], SamplingParams(max_tokens=4), 0.0)
    assert bm.match_tiers(again, 0) == []


def test_the_ttl_of_a_pin_that_gave_way_frees_its_host_blocks(models: dict[str, Path]) -> None:
    engine = _engine(models["gpt_oss"], 24, host=64)
    turn = _answer(engine, "t1", random_prompt(34, seed=5), session="agent")
    hashes = list(engine.sessions["agent"].block_hashes)
    _answer(engine, "filler", random_prompt(60, seed=6))  # the pin gives way: its blocks spill to the host
    host = engine.block_manager.host
    assert host is not None and "agent" in engine.block_manager.spilled_pins
    spilled = sum(_host_blocks_by_group(engine, hashes))
    free_before = len(host.free_slots)
    now = engine.clock.now()
    engine.block_manager.expire_pins(now + 30.0)  # within its 60 s: kept
    assert sum(_host_blocks_by_group(engine, hashes)) == spilled > 0
    engine.block_manager.expire_pins(now + 61.0)
    assert sum(_host_blocks_by_group(engine, hashes)) == 0 and len(host.free_slots) == free_before + spilled
    assert not engine.block_manager.spilled_pins
    follow_up = turn.token_ids + random_prompt(5, seed=7)
    again = _answer(engine, "t2", follow_up)  # computed again, as without tiers
    assert engine.stats().blocks.host_hit_tokens == 0
    assert again.output_token_ids == transformers_greedy(models["gpt_oss"], follow_up, NEW)


@pytest.mark.parametrize(("model", "blocks"), [("gpt_oss", 36), ("gemma3", 70)])
def test_requests_preempted_with_a_host_tier_come_back_through_it_and_answer_as_transformers(
        models: dict[str, Path], model: str, blocks: int) -> None:
    engine = _engine(models[model], blocks, host=48, max_num_seqs=4)
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    prompts = {f"p{i}": random_prompt(20, seed=20 + i) for i in range(3)}
    seqs = {name: engine.add_request(name, prompt, params) for name, prompt in prompts.items()}
    while engine.has_unfinished():
        engine.step()
    assert engine.scheduler.num_preemptions > 0
    assert engine.stats().blocks.host_hit_tokens > 0  # a preempted request took some of its KV back from the host
    for name, prompt in prompts.items():
        assert seqs[name].output_token_ids == transformers_greedy(models[model], prompt, 30), name
