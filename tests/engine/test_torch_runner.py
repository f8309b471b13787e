"""TorchModelRunner against transformers: token-exact greedy agreement on the tiny random model, driven
step by step by hand (one sequence, a chunked mixed batch, prefix reuse), on CPU and, when present, CUDA."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.batch import ScheduledBatch
from engine.model.config import ModelConfig
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner

BLOCK_SIZE = 4
NUM_BLOCKS = 256
GREEDY = SamplingParams(temperature=0.0, max_tokens=64)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")),
]


class BlockPool:
    """Test-local allocator handing out shuffled block ids, so table lookups can't pass by accident."""

    def __init__(self, num_blocks: int = NUM_BLOCKS, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        while len(seq.block_table) * BLOCK_SIZE < num_tokens:
            seq.block_table.append(self.free.pop())


def hf_greedy(model_dir: Path, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outputs = []
    for prompt in prompts:
        out = model.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0
        )
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


def make_prompts(lengths: list[int], vocab_size: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(n)] for n in lengths]


def apply(batch: ScheduledBatch, tokens: list[int]) -> None:
    """What the engine does with a step's result."""
    sampled = iter(tokens)
    samples = [batch.samples(i) for i in range(len(batch))]
    for seq, n, sample in zip(batch.seqs, batch.num_new_tokens, samples, strict=True):
        seq.num_computed_tokens += n
        if sample:
            seq.token_ids.append(next(sampled))
    assert next(sampled, None) is None


def run_chunked(runner: TorchModelRunner, seqs: list[Sequence], pool: BlockPool, max_new: int, budget: int,
                chunk: int, arrivals: list[int]) -> None:
    """A miniature scheduler: per step a token budget, prefills cut into chunks, decodes take one token;
    sequence i joins at step arrivals[i]."""
    step = 0
    while any(s.num_output_tokens < max_new for s in seqs):
        batch = ScheduledBatch()
        left = budget
        for seq, arrival in zip(seqs, arrivals, strict=True):
            if step < arrival or seq.num_output_tokens >= max_new or not left:
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, chunk, left)
            pool.grow(seq, seq.num_computed_tokens + n)
            batch.add(seq, n)
            left -= n
        if len(batch):
            apply(batch, runner.execute(batch))
        step += 1


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> dict:
    vocab = ModelConfig.from_dir(tiny_model_dir).vocab_size
    prompts = make_prompts([13, 3, 9, 17, 30, 1], vocab)
    shared = prompts[4][:20] + make_prompts([7], vocab, seed=2)[0]  # shares 5 full blocks with prompts[4]
    prompts += [shared, prompts[4][:21]]
    return {"prompts": prompts, "outputs": hf_greedy(tiny_model_dir, prompts, max_new_tokens=24)}


@pytest.mark.parametrize("device", DEVICES)
def test_single_sequence_matches_transformers(tiny_model_dir: Path, reference: dict, device: str) -> None:
    runner = TorchModelRunner(tiny_model_dir, NUM_BLOCKS, BLOCK_SIZE, device=device, dtype=torch.float32)
    pool = BlockPool()
    seq = Sequence("solo", reference["prompts"][0], GREEDY, 0.0)
    while seq.num_output_tokens < 24:
        batch = ScheduledBatch()
        n = seq.num_tokens - seq.num_computed_tokens
        pool.grow(seq, seq.num_tokens)
        batch.add(seq, n)
        apply(batch, runner.execute(batch))
    assert seq.output_token_ids == reference["outputs"][0]
    assert len(set(seq.output_token_ids)) > 8  # the tiny model is not stuck repeating itself


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_mixed_batch_matches_transformers(tiny_model_dir: Path, reference: dict, device: str) -> None:
    runner = TorchModelRunner(tiny_model_dir, NUM_BLOCKS, BLOCK_SIZE, device=device, dtype=torch.float32)
    prompts, outputs = reference["prompts"][:6], reference["outputs"][:6]
    seqs = [Sequence(f"r{i}", p, GREEDY, 0.0) for i, p in enumerate(prompts)]
    # Budget 12 with chunks of 5: prompts span several steps, and later arrivals prefill beside decodes.
    run_chunked(runner, seqs, BlockPool(), max_new=24, budget=12, chunk=5, arrivals=[0, 0, 1, 3, 6, 9])
    assert [s.output_token_ids for s in seqs] == outputs


@pytest.mark.parametrize("device", DEVICES)
def test_prefix_reuse_matches_transformers(tiny_model_dir: Path, reference: dict, device: str) -> None:
    runner = TorchModelRunner(tiny_model_dir, NUM_BLOCKS, BLOCK_SIZE, device=device, dtype=torch.float32)
    pool = BlockPool()
    prompts, outputs = reference["prompts"], reference["outputs"]
    first = Sequence("first", prompts[4], GREEDY, 0.0)
    pool.grow(first, first.num_tokens)
    batch = ScheduledBatch()
    batch.add(first, first.num_tokens)
    apply(batch, runner.execute(batch))

    # Both newcomers start from the first sequence's 5 full prompt blocks (20 tokens) already in cache:
    # one with a different continuation, one whose prompt has just one token past them (a 1-token prefill).
    shared_blocks = first.block_table[:5]
    others = [Sequence("diverging", prompts[6], GREEDY, 0.0), Sequence("identical", prompts[7], GREEDY, 0.0)]
    for seq in others:
        seq.block_table = list(shared_blocks)
        seq.num_computed_tokens = 20
    # They prefill in the same steps in which `first` keeps decoding into its own (unshared) blocks.
    run_chunked(runner, [first, *others], pool, max_new=24, budget=16, chunk=4, arrivals=[0, 0, 2])
    assert first.output_token_ids == outputs[4]
    assert others[0].output_token_ids == outputs[6]
    assert others[1].output_token_ids == outputs[7]


def test_batch_of_32_decodes_matches_solo_runs(tiny_model_dir: Path) -> None:
    """Padding and masking of the batched decode path: 32 decodes of different context lengths in one
    step give the same tokens as each sequence alone."""
    runner = TorchModelRunner(tiny_model_dir, 512, BLOCK_SIZE, dtype=torch.float32)
    prompts = make_prompts([1 + 3 * i for i in range(32)], runner.config.vocab_size, seed=5)
    pool = BlockPool(512)
    seqs = [Sequence(f"d{i}", p, GREEDY, 0.0) for i, p in enumerate(prompts)]
    for seq in seqs:
        pool.grow(seq, seq.num_tokens)
        batch = ScheduledBatch()
        batch.add(seq, seq.num_tokens)
        apply(batch, runner.execute(batch))
    for _ in range(4):
        batch = ScheduledBatch()
        for seq in seqs:
            pool.grow(seq, seq.num_tokens)
            batch.add(seq, 1)
        apply(batch, runner.execute(batch))
    solo = TorchModelRunner(tiny_model_dir, 64, BLOCK_SIZE, dtype=torch.float32)
    for seq, prompt in zip(seqs, prompts, strict=True):
        alone = Sequence("alone", prompt, GREEDY, 0.0)
        alone.block_table = list(range(32))
        while alone.num_output_tokens < 5:
            batch = ScheduledBatch()
            batch.add(alone, alone.num_tokens - alone.num_computed_tokens)
            apply(batch, solo.execute(batch))
        assert seq.output_token_ids == alone.output_token_ids


def test_steps_that_do_not_sample_return_nothing(tiny_model_dir: Path) -> None:
    runner = TorchModelRunner(tiny_model_dir, 16, BLOCK_SIZE)
    seq = Sequence("chunk", list(range(10)), GREEDY, 0.0)
    seq.block_table = [3, 4, 5]
    batch = ScheduledBatch()
    batch.add(seq, 6)
    assert runner.execute(batch) == []
    assert runner.execute(ScheduledBatch()) == []
    assert runner.eos_token_ids == ModelConfig.from_dir(tiny_model_dir).eos_token_ids


def test_missing_blocks_are_reported(tiny_model_dir: Path) -> None:
    runner = TorchModelRunner(tiny_model_dir, 16, BLOCK_SIZE)
    seq = Sequence("short-table", list(range(10)), GREEDY, 0.0)
    seq.block_table = [0, 1]
    batch = ScheduledBatch()
    batch.add(seq, 10)
    with pytest.raises(ValueError, match="3 blocks needed"):
        runner.execute(batch)


def test_kv_block_budget(tiny_model_dir: Path) -> None:
    config = ModelConfig.from_dir(tiny_model_dir)
    per_block = TorchModelRunner.kv_bytes_per_block(config, 16, torch.float32)
    assert per_block == 2 * config.num_layers * 16 * config.num_kv_heads * config.head_dim * 4
    assert TorchModelRunner.kv_bytes_per_block(config, 16, torch.bfloat16) == per_block // 2
    blocks = TorchModelRunner.num_blocks_for_budget(tiny_model_dir, 10 * per_block + 1, 16, device="cpu")
    assert blocks == 10
    runner = TorchModelRunner(tiny_model_dir, blocks, 16, device="cpu")
    assert runner.kv_cache.numel() * runner.kv_cache.element_size() == blocks * per_block


def hf_logprobs(model_dir: Path, tokens: list[int], first: int) -> torch.Tensor:
    """transformers' log-probabilities of the next token at positions first-1 .. len(tokens)-2."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0]
    return torch.log_softmax(logits[first - 1 : len(tokens) - 1], dim=-1)


def test_logprobs_match_transformers_in_a_mixed_batch(tiny_model_dir: Path, reference: dict) -> None:
    """Rows that ask get their sampled tokens' log-probabilities and top alternatives (the model's
    own distribution); rows that do not get none, in the same chunked batches."""
    runner = TorchModelRunner(tiny_model_dir, NUM_BLOCKS, BLOCK_SIZE, dtype=torch.float32)
    asks = [5, None, 0, 20]
    seqs = [Sequence(f"r{i}", p, SamplingParams(temperature=0.0, max_tokens=64, logprobs=k), 0.0)
            for i, (p, k) in enumerate(zip(reference["prompts"][:4], asks, strict=True))]
    seen: dict[str, list] = {s.request_id: [] for s in seqs}
    pool = BlockPool()
    while any(s.num_output_tokens < 8 for s in seqs):
        batch = ScheduledBatch()
        for seq in seqs:
            if seq.num_output_tokens < 8:
                n = min(seq.num_tokens - seq.num_computed_tokens, 5)
                pool.grow(seq, seq.num_computed_tokens + n)
                batch.add(seq, n)
        tokens = runner.execute(batch)
        sampled = [batch.seqs[i] for i in batch.sampling_indices]
        for row, found in runner.step_logprobs.items():
            seen[sampled[row].request_id].append(found)
        apply(batch, tokens)
    for seq, k in zip(seqs, asks, strict=True):
        found = seen[seq.request_id]
        if k is None:
            assert found == []
            continue
        assert len(found) == 8 and all(len(f.top_ids) == k for f in found)
        expected = hf_logprobs(tiny_model_dir, seq.token_ids, seq.num_prompt_tokens)
        for position, (token, f) in enumerate(zip(seq.output_token_ids, found, strict=True)):
            assert f.logprob == pytest.approx(expected[position, token].item(), abs=1e-4)
            if k:
                top = expected[position].topk(k)
                assert list(f.top_ids) == top.indices.tolist()
                assert list(f.top_logprobs) == pytest.approx(top.values.tolist(), abs=1e-4)
                assert f.top_ids[0] == token  # greedy: the likeliest
