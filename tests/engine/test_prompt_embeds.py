"""Prompt embeddings on the engine (engine/prompt_embeds.py): transformers' input embeddings of a prompt's ids,
sent as prompt_embeds, answer exactly as the ids do (tokens and logprobs): alone, in a batch beside token
requests with prefills cut into chunks, and after preemption; the prefix cache keys their blocks by the
embeddings' bytes; transformers' generate(inputs_embeds=...) agrees, Gemma 3's scaled embeddings included;
the repetition penalty ignores the placeholder ids."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.logits_processors import process_logits
from engine.outputs import RequestOutput
from engine.prompt_embeds import PLACEHOLDER_TOKEN_ID
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import random_prompt, save_hf_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=3)


@cache
def transformers_model(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def input_embeddings(model_dir: Path, ids: list[int]) -> torch.Tensor:
    """What transformers' embedding layer gives for `ids` (as vLLM's example builds prompt_embeds)."""
    with torch.no_grad():
        return transformers_model(model_dir).get_input_embeddings()(torch.tensor(ids))


def make_engine(model_dir: Path, num_blocks: int = 64, chunk: int = 512, **config: object) -> LLMEngine:
    runner = TorchModelRunner(model_dir, num_blocks, 16, device="cpu")
    return LLMEngine(EngineConfig(num_blocks=num_blocks, max_model_len=256, long_prefill_token_threshold=chunk,
                                  enable_prompt_embeds=True, **config), runner)  # type: ignore[arg-type]


def run(engine: LLMEngine, requests: dict[str, list[int] | torch.Tensor],
        params: SamplingParams = GREEDY) -> dict[str, RequestOutput]:
    """Every request added at once (ids, or embeddings with placeholder ids), stepped to the end: each one's
    last output with all its tokens and logprobs."""
    for name, prompt in requests.items():
        if isinstance(prompt, torch.Tensor):
            engine.add_request(name, [PLACEHOLDER_TOKEN_ID] * len(prompt), params, prompt_embeds=prompt)
        else:
            engine.add_request(name, prompt, params)
    tokens: dict[str, list[int]] = {name: [] for name in requests}
    logprobs: dict[str, list] = {name: [] for name in requests}
    last: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            logprobs[out.request_id] += out.logprobs or []
            if out.finished:
                out.new_token_ids, out.logprobs = tokens[out.request_id], logprobs[out.request_id]
                last[out.request_id] = out
    return last


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_hf_model("llama3", tmp_path_factory.mktemp("llama3"))


def test_embeddings_answer_as_their_ids_with_the_same_logprobs(llama: Path) -> None:
    ids = random_prompt(30, seed=5)
    outs = run(make_engine(llama), {"ids": ids})
    embedded = run(make_engine(llama), {"embeds": input_embeddings(llama, ids)})["embeds"]
    assert embedded.new_token_ids == outs["ids"].new_token_ids
    assert embedded.logprobs == outs["ids"].logprobs  # the same float32 rows: the same numbers
    assert embedded.num_prompt_tokens == 30


def test_transformers_generate_from_the_same_embeddings_agrees(llama: Path) -> None:
    ids = random_prompt(20, seed=6)
    embeds = input_embeddings(llama, ids) * 1.5  # not any token's: the rows themselves decide the answer
    expected = transformers_model(llama).generate(inputs_embeds=embeds[None], do_sample=False, max_new_tokens=8, eos_token_id=None,
                              pad_token_id=0)[0].tolist()
    ours = run(make_engine(llama), {"scaled": embeds})["scaled"].new_token_ids
    assert ours == expected
    assert ours != run(make_engine(llama), {"ids": ids})["ids"].new_token_ids


def test_a_batch_of_embeddings_and_ids_chunked_across_steps(llama: Path) -> None:
    """Prefills of 7 tokens a step: embedded prompts cut into chunks beside token prompts, each answering as
    its ids do alone."""
    prompts = {f"p{i}": random_prompt(length, seed=10 + i) for i, length in enumerate((23, 9, 31, 16))}
    reference = make_engine(llama)
    alone = {name: run(reference, {name: ids})[name] for name, ids in prompts.items()}
    requests: dict[str, list[int] | torch.Tensor] = {
        name: input_embeddings(llama, ids) if i % 2 == 0 else ids for i, (name, ids) in enumerate(prompts.items())}
    outs = run(make_engine(llama, chunk=7, max_num_batched_tokens=24, max_num_seqs=4), requests)
    for name in prompts:
        assert outs[name].new_token_ids == alone[name].new_token_ids, name
        assert [lp.top_ids for lp in outs[name].logprobs] == [lp.top_ids for lp in alone[name].logprobs], name
        torch.testing.assert_close(torch.tensor([lp.logprob for lp in outs[name].logprobs]),
                                   torch.tensor([lp.logprob for lp in alone[name].logprobs]))


def test_preempted_embedded_prompts_are_recomputed_from_their_rows(llama: Path) -> None:
    prompts = {f"p{i}": random_prompt(20, seed=20 + i) for i in range(3)}
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    engine = make_engine(llama, num_blocks=6, enable_prefix_caching=False)
    outs = run(engine, {name: input_embeddings(llama, ids) for name, ids in prompts.items()}, params)
    assert engine.scheduler.num_preemptions > 0
    reference = make_engine(llama)
    for name, ids in prompts.items():
        assert outs[name].new_token_ids == run(reference, {name: ids}, params)[name].new_token_ids, name


def test_the_prefix_cache_keys_embedded_blocks_by_their_bytes(llama: Path) -> None:
    """The same rows again hit their two full blocks; other rows, or the placeholder ids sent as tokens,
    hit nothing of them."""
    ids = random_prompt(40, seed=7)
    embeds = input_embeddings(llama, ids)
    engine = make_engine(llama)
    first = run(engine, {"first": embeds})["first"]
    again = run(engine, {"again": embeds.clone()})["again"]
    other = run(engine, {"other": input_embeddings(llama, random_prompt(40, seed=8))})["other"]
    zeros = run(engine, {"zeros": [PLACEHOLDER_TOKEN_ID] * 40})["zeros"]
    assert (first.num_cached_tokens, again.num_cached_tokens, other.num_cached_tokens) == (0, 32, 0)
    assert zeros.num_cached_tokens == 0
    assert again.new_token_ids == first.new_token_ids
    # Rows that begin as the first's and then differ (a shared soft prompt) hit the blocks the two have in common,
    # and answer as their ids do.
    ids_b = ids[:20] + random_prompt(20, seed=9)
    shared = run(engine, {"shared": input_embeddings(llama, ids_b)})["shared"]
    assert shared.num_cached_tokens == 16  # the whole block within the 20 common rows
    assert shared.new_token_ids == run(make_engine(llama), {"ids": ids_b})["ids"].new_token_ids


def test_an_embedded_prompts_block_hashes_are_the_same_in_every_process() -> None:
    """The disk tier's blocks outlive the process: their keys may not depend on its hash salt."""
    code = ("import torch; from engine.sequence import Sequence; from engine.sampling_params import SamplingParams; "
            "from engine.block_manager import BlockManager; rows = torch.arange(12.0).reshape(3, 4); "
            "seq = Sequence('s', [0, 0, 0], SamplingParams(), 0.0, prompt_embeds=rows); "
            "BlockManager(8, 1)._ensure_hashes(seq, 3); print(seq.block_hashes)")
    rows = torch.arange(12.0).reshape(3, 4)
    seq = Sequence("s", [0, 0, 0], SamplingParams(), 0.0, prompt_embeds=rows)
    BlockManager(8, 1)._ensure_hashes(seq, 3)
    here = str(seq.block_hashes)
    salt = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # another process salted otherwise
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": salt}).stdout
    assert there.strip() == here


def test_gemma3_takes_its_scaled_input_embeddings(tmp_path: Path) -> None:
    """Gemma 3's input embedding layer scales by sqrt(hidden): prompt_embeds are those rows (transformers'
    `get_input_embeddings()`, vLLM's), spliced after the scale."""
    gemma = save_hf_model("gemma3", tmp_path / "gemma3")
    ids = random_prompt(18, seed=4)
    by_ids = run(make_engine(gemma), {"ids": ids})["ids"]
    by_embeds = run(make_engine(gemma), {"embeds": input_embeddings(gemma, ids)})["embeds"]
    assert by_embeds.new_token_ids == by_ids.new_token_ids


def test_the_repetition_penalty_counts_only_generated_tokens_of_an_embedded_prompt() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    embedded = Sequence("e", [PLACEHOLDER_TOKEN_ID] * 3, params, 0.0, prompt_embeds=torch.ones(3, 4))
    embedded.token_ids.append(5)
    by_ids = Sequence("t", [PLACEHOLDER_TOKEN_ID] * 3, params, 0.0)
    by_ids.token_ids.append(5)
    logits = process_logits(torch.ones(2, 8), [embedded, by_ids], ())
    assert logits[0].tolist() == [1.0, 1, 1, 1, 1, 0.5, 1, 1]  # only the generated 5
    assert logits[1, 0] == 0.5 and logits[1, 5] == 0.5
