"""Sampling controls on the tiny model through the engine, against references built on transformers'
logits: greedy decoding under presence/frequency penalties and logit_bias (OpenAI's formula applied
by hand), the repetition penalty (transformers' own `generate`), min_tokens, and seeded sampling
with penalties that repeats whatever else shares the batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.test_torch_runner import make_prompts


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir: Path):  # noqa: ANN201 - transformers' type
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def make_engine(model_dir: Path) -> LLMEngine:
    runner = TorchModelRunner(model_dir, 256, 4, dtype=torch.float32)
    return LLMEngine(EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=64, max_num_seqs=8), runner)


def generate(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, Sequence]:
    seqs = {rid: engine.add_request(rid, prompt, params) for rid, (prompt, params) in requests.items()}
    while engine.has_unfinished():
        engine.step()
    return seqs


def test_greedy_with_penalties_and_bias_follows_openais_formula(tiny_model_dir: Path, hf_model) -> None:  # noqa: ANN001
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompts = make_prompts([7, 12], vocab, seed=11)
    bias = ((17, 4.0), (99, 3.0), (5, -100.0))
    asks = {"pen": (prompts[0], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                                               frequency_penalty=1.5, presence_penalty=0.5, logit_bias=bias)),
            "plain": (prompts[1], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))}
    seqs = generate(make_engine(tiny_model_dir), asks)
    for rid, (prompt, params) in asks.items():
        output = seqs[rid].output_token_ids
        with torch.inference_mode():
            logits = hf_model(torch.tensor([prompt + output])).logits[0, len(prompt) - 1:-1]
        for step, token in enumerate(output):
            row = logits[step].clone()
            counts = torch.bincount(torch.tensor(output[:step], dtype=torch.long), minlength=vocab).float()
            row -= counts * params.frequency_penalty + (counts > 0).float() * params.presence_penalty
            for token_id, value in params.logit_bias:
                row[token_id] += value
            assert token == row.argmax().item(), (rid, step)
    penalized = seqs["pen"].output_token_ids
    assert 17 in penalized and 99 in penalized and 5 not in penalized  # the biases took effect...
    assert max(penalized.count(t) for t in set(penalized)) < 16 // 2  # ...and the penalty stopped a loop


def test_repetition_penalty_matches_transformers_generate(tiny_model_dir: Path, hf_model) -> None:  # noqa: ANN001
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompt = make_prompts([9], vocab, seed=12)[0]
    seqs = generate(make_engine(tiny_model_dir), {"rep": (prompt, SamplingParams(
        temperature=0.0, max_tokens=20, ignore_eos=True, repetition_penalty=1.8))})
    expected = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, repetition_penalty=1.8,
                                 eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    plain = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, eos_token_id=None,
                              pad_token_id=0)[0, len(prompt):].tolist()
    assert seqs["rep"].output_token_ids == expected != plain


def test_min_tokens_holds_off_eos_and_stop_strings(tiny_model_dir: Path) -> None:
    """EOS biased to be every step's choice: without min_tokens the answer is EOS alone; with it,
    exactly min_tokens other tokens come first."""
    from engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(tiny_model_dir)
    eos = tokenizer.eos_token_ids[0]
    runner = TorchModelRunner(tiny_model_dir, 256, 4, dtype=torch.float32)
    engine = LLMEngine(EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=64), runner,
                       tokenizer=tokenizer)
    prompt = tokenizer.encode("Once upon a time")
    forced = ((eos, 100.0),)
    seqs = generate(engine, {
        "free": (prompt, SamplingParams(temperature=0.0, max_tokens=10, logit_bias=forced)),
        "held": (prompt, SamplingParams(temperature=0.0, max_tokens=10, logit_bias=forced, min_tokens=4)),
        "sampled": (prompt, SamplingParams(temperature=1.0, seed=3, max_tokens=10, logit_bias=forced, min_tokens=6)),
    })
    assert seqs["free"].output_token_ids == [eos] and seqs["free"].finish_reason == "stop"
    for rid, n in (("held", 4), ("sampled", 6)):
        assert seqs[rid].output_token_ids[-1] == eos and eos not in seqs[rid].output_token_ids[:-1]
        assert seqs[rid].num_output_tokens == n + 1 and seqs[rid].finish_reason == "stop"
    # A stop string under min_tokens does not end the answer: the text it ran through is kept.
    text_ids = tokenizer.encode(" the the the the the the")
    the = text_ids[1]
    seqs = generate(engine, {
        "stop": (prompt, SamplingParams(temperature=0.0, max_tokens=6, logit_bias=((the, 100.0),), stop=("the",))),
        "min": (prompt, SamplingParams(temperature=0.0, max_tokens=6, logit_bias=((the, 100.0),), stop=("the",),
                                       min_tokens=3)),
    })
    assert seqs["stop"].num_output_tokens == 1 and seqs["stop"].finish_reason == "stop"
    assert seqs["min"].num_output_tokens == 3 and seqs["min"].finish_reason == "stop"


def test_seeded_sampling_with_penalties_repeats_in_any_batch(tiny_model_dir: Path) -> None:
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompt, other = make_prompts([10, 14], vocab, seed=13)
    params = SamplingParams(temperature=1.0, seed=42, max_tokens=12, ignore_eos=True, presence_penalty=1.0,
                            repetition_penalty=1.2, top_k=50, min_p=0.01, top_p=0.9)
    alone = generate(make_engine(tiny_model_dir), {"a": (prompt, params)})["a"].output_token_ids
    crowd = generate(make_engine(tiny_model_dir), {
        "x": (other, SamplingParams(temperature=1.0, max_tokens=12, frequency_penalty=2.0, ignore_eos=True)),
        "a": (prompt, params),
        "y": (other, SamplingParams(temperature=0.0, max_tokens=5, logit_bias=((3, 2.0),), ignore_eos=True)),
    })
    assert crowd["a"].output_token_ids == alone
    unseeded = generate(make_engine(tiny_model_dir), {"a": (prompt, SamplingParams(
        temperature=1.0, seed=43, max_tokens=12, ignore_eos=True, presence_penalty=1.0))})["a"].output_token_ids
    assert unseeded != alone
