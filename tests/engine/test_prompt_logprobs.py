"""Prompt log-probabilities (a completion's `echo` with `logprobs`) on the tiny model: equal to
transformers' for every prompt token but the first, whether the prompt is computed in one step or
in chunks beside other requests, when its blocks are already in the prefix cache (scoring computes
them again), and when the request is preempted mid-prompt (nothing is scored twice)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.batch import ScheduledBatch
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.test_torch_runner import BlockPool, apply, hf_logprobs, make_prompts

BLOCK_SIZE = 4


def scoring(top: int = 0, max_tokens: int = 2) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, prompt_logprobs=top)


def assert_match_transformers(model_dir: Path, prompt: list[int], found: list, top: int) -> None:
    expected = hf_logprobs(model_dir, prompt, 1)  # the next-token distributions at positions 0 .. P-2
    assert len(found) == len(prompt) - 1
    for position, lp in enumerate(found):
        assert lp.logprob == pytest.approx(expected[position, prompt[position + 1]].item(), abs=1e-4)
        top_k = expected[position].topk(top)
        assert list(lp.top_ids) == top_k.indices.tolist()
        assert list(lp.top_logprobs) == pytest.approx(top_k.values.tolist(), abs=1e-4)


def test_runner_scores_chunked_prompts_beside_other_requests(tiny_model_dir: Path) -> None:
    runner = TorchModelRunner(tiny_model_dir, 256, BLOCK_SIZE, dtype=torch.float32)
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompts = make_prompts([23, 9, 30], vocab, seed=5)
    asks = [3, None, 0]
    seqs = [Sequence(f"r{i}", p, SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=k), 0.0)
            for i, (p, k) in enumerate(zip(prompts, asks, strict=True))]
    pool = BlockPool()
    while any(s.num_output_tokens < 4 for s in seqs):
        batch = ScheduledBatch()
        for seq in seqs:
            if seq.num_output_tokens < 4:
                n = min(seq.num_tokens - seq.num_computed_tokens, 7)  # chunks that end anywhere in a block
                pool.grow(seq, seq.num_computed_tokens + n)
                batch.add(seq, n)
        tokens = runner.execute(batch)
        for i, scored in runner.step_prompt_logprobs.items():
            batch.seqs[i].prompt_logprobs += scored
        apply(batch, tokens)
    for seq, prompt, k in zip(seqs, prompts, asks, strict=True):
        if k is None:
            assert seq.prompt_logprobs == []
        else:
            assert_match_transformers(tiny_model_dir, prompt, seq.prompt_logprobs, k)


def make_engine(model_dir: Path, num_blocks: int = 128, **config: object) -> LLMEngine:
    runner = TorchModelRunner(model_dir, num_blocks, BLOCK_SIZE, dtype=torch.float32)
    return LLMEngine(EngineConfig(block_size=BLOCK_SIZE, num_blocks=num_blocks, max_num_batched_tokens=64,
                                  max_num_seqs=8, **config), runner)  # type: ignore[arg-type]


def run(engine: LLMEngine) -> dict[str, list[RequestOutput]]:
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def test_a_cached_prompt_is_computed_again_to_be_scored(tiny_model_dir: Path) -> None:
    engine = make_engine(tiny_model_dir)
    prompt = make_prompts([26], ModelConfig.from_dir(tiny_model_dir).vocab_size, seed=6)[0]
    engine.add_request("warm", prompt, SamplingParams(temperature=0.0, max_tokens=1))
    run(engine)
    engine.add_request("plain", prompt, SamplingParams(temperature=0.0, max_tokens=1))
    engine.add_request("scored", prompt, scoring(top=2))
    outputs = run(engine)
    assert outputs["plain"][0].num_cached_tokens == 24  # the cache holds the prompt's six full blocks
    first = outputs["scored"][0]
    assert first.num_cached_tokens == 0 and outputs["scored"][1].prompt_logprobs is None
    assert_match_transformers(tiny_model_dir, prompt, first.prompt_logprobs, 2)


def test_preemption_mid_prompt_scores_each_token_once(tiny_model_dir: Path) -> None:
    """Twelve blocks for two requests that need eight each: the later one is preempted while its
    prompt is being computed in 8-token chunks, and computes it again from its start."""
    engine = make_engine(tiny_model_dir, num_blocks=12, long_prefill_token_threshold=8, admit_whole_prompt=False)
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompts = make_prompts([20, 28], vocab, seed=7)
    engine.add_request("a", prompts[0], scoring(max_tokens=12))
    engine.add_request("b", prompts[1], scoring(top=1, max_tokens=4))
    outputs = run(engine)
    assert engine.stats().num_preemptions > 0
    for request_id, prompt, top in (("a", prompts[0], 0), ("b", prompts[1], 1)):
        assert_match_transformers(tiny_model_dir, prompt, outputs[request_id][0].prompt_logprobs, top)


def test_a_one_token_prompt_has_nothing_to_score(tiny_model_dir: Path) -> None:
    engine = make_engine(tiny_model_dir)
    engine.add_request("one", [5], scoring(top=3))
    assert run(engine)["one"][0].prompt_logprobs == []
