"""build_engine: a served engine over the tiny model or over a simulated runner on a wall clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from engine.batch import StepShape
from engine.build import build_engine
from engine.byte_tokenizer import ByteTokenizer
from engine.config import SpeculativeConfig
from engine.model.config import ModelConfig
from engine.roofline import RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.step_time import LinearStepTime, save_profile
from engine.tiny_model import make_truncated_model
from engine.torch_runner import TorchModelRunner, default_dtype

STEP = LinearStepTime(c0=5e-3, c_prefill_token=0.0, c_prefill_seq=0.0, c_attn=0.0, c_decode_seq=0.0, c_kv_token=0.0)


async def generate_text(engine, prompt, max_tokens: int) -> tuple[str, list]:
    outs = [o async for o in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))]
    await engine.shutdown()
    return "".join(o.text_delta for o in outs), outs


def test_sim_engine_takes_its_modelled_step_time(tmp_path: Path):
    profile = tmp_path / "linear.json"
    save_profile(profile, STEP)
    engine = build_engine(sim_profile=profile, num_blocks=128, max_model_len=1024)
    assert isinstance(engine.tokenizer, ByteTokenizer) and engine.max_model_len == 1024
    start = time.monotonic()
    text, outs = asyncio.run(generate_text(engine, "hello sim", 10))
    assert time.monotonic() - start >= 10 * 5e-3  # a wall clock: every step slept its 5 ms
    assert len(outs) == 10 and outs[-1].finish_reason == "length"
    assert text.isascii() and len(text) == 10


def test_sim_engine_sizes_its_kv_cache_from_bytes_or_the_profile(tmp_path: Path):
    profile = tmp_path / "roofline.json"
    roofline = RooflineStepTime.builtin()
    save_profile(profile, roofline)
    sized = build_engine(sim_profile=profile, kv_cache_memory_bytes=1 << 30)
    assert sized.engine.config.num_blocks == (1 << 30) // (roofline.model.kv_bytes_per_token * 16)
    assert build_engine(sim_profile=profile).engine.config.num_blocks == roofline.kv_capacity_blocks(16)
    assert roofline.predict(StepShape(0, 0, 1, 100, 0)) > 0


def test_model_engine_sizes_its_kv_cache_from_bytes(tiny_model_dir: Path):
    config = ModelConfig.from_dir(tiny_model_dir)
    per_block = TorchModelRunner.kv_bytes_per_block(config, 16, default_dtype(config, torch.device("cpu")))
    engine = build_engine(tiny_model_dir, device="cpu", kv_cache_memory_bytes=per_block * 40, max_model_len=100_000)
    assert engine.engine.config.num_blocks == 40
    assert engine.max_model_len == 40 * 16  # the context is capped by what the cache can hold
    text, outs = asyncio.run(generate_text(engine, "hello model", 4))
    assert len(outs) == 4 and outs[-1].num_prompt_tokens > 0


def test_a_draft_models_kv_cache_comes_out_of_the_same_budget(tiny_model_dir: Path, tmp_path: Path):
    """A block is the target's and the draft's together: both caches fit in `kv_cache_memory_bytes`."""
    draft = make_truncated_model(tiny_model_dir, tmp_path / "draft", 1)
    dtype = default_dtype(ModelConfig.from_dir(tiny_model_dir), torch.device("cpu"))
    target_block, draft_block = (TorchModelRunner.kv_bytes_per_block(ModelConfig.from_dir(d), 16, dtype)
                                 for d in (tiny_model_dir, draft))
    budget = (target_block + draft_block) * 30
    engine = build_engine(tiny_model_dir, device="cpu", kv_cache_memory_bytes=budget,
                          speculative=SpeculativeConfig(model=str(draft), num_speculative_tokens=2))
    llm = engine.engine
    proposer = llm.scheduler.drafter
    kv_bytes = sum(r.kv_cache.numel() * r.kv_cache.element_size() for r in (llm.runner, proposer.runner))
    assert llm.config.num_blocks == proposer.block_manager.num_blocks == 30
    assert kv_bytes <= budget < kv_bytes + target_block + draft_block
    text, outs = asyncio.run(generate_text(engine, "hello model", 4))
    assert sum(len(o.new_token_ids) for o in outs) == 4  # a step may yield several: drafts held


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        build_engine()
    with pytest.raises(ValueError, match="exactly one"):
        build_engine("m", "p.json")
    with pytest.raises(ValueError, match="at most one"):
        build_engine("m", num_blocks=4, kv_cache_memory_bytes=1 << 20)
