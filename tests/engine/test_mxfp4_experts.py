"""gpt-oss's MXFP4 experts kept packed (engine/model/mxfp4.py): the packed model answers exactly as the one
dequantized at load (`dequantize_mxfp4`) and as transformers, alone and in a batch whose tokens go to different
experts, in float32 and bf16 and on two tensor-parallel ranks; a step dequantizes only the experts its tokens
were routed to; the experts take 4.25 bits a weight; widths that would cut a 32-value block are refused; the
roofline prices gpt-oss-120b's packed experts into one H100."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import engine.model.moe as moe
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.moe import Experts
from engine.model.mxfp4 import Mxfp4Experts, dequantize_mxfp4
from engine.model.quant_config import QuantizationError
from engine.roofline import GPUS, MODELS, RooflineStepTime
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner
from tests.engine.gpt_oss_checkpoints import VOCAB, pack_mxfp4, save_gpt_oss, unpack_reference
from tests.engine.hf_checkpoints import runner_greedy, transformers_greedy

PROMPTS = {"a": (1, 5), "b": (2, 23), "c": (3, 40), "d": (4, 11)}  # name: (seed, length)


def prompt_of(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(length)]


@pytest.fixture(scope="module")
def mxfp4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt_oss(tmp_path_factory.mktemp("mxfp4") / "m", mxfp4=True)


def _runner(model_dir: Path, dtype: torch.dtype, **kwargs: object) -> TorchModelRunner:
    return TorchModelRunner(model_dir, 64, 4, device="cpu", dtype=dtype, **kwargs)  # type: ignore[arg-type]


def _batch(runner: TorchModelRunner) -> dict[str, tuple[list[float], list[int]]]:
    """Four prompts prefilled and decoded together: each one's prompt log-probabilities and 8 greedy tokens."""
    engine = LLMEngine(EngineConfig(block_size=4, num_blocks=64, max_model_len=256, max_num_seqs=4,
                                    max_num_batched_tokens=128), runner)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
    seqs = {name: engine.add_request(name, prompt_of(length, seed), params) for name, (seed, length) in PROMPTS.items()}
    while engine.has_unfinished():
        engine.step()
    return {name: ([lp.logprob for lp in seq.prompt_logprobs if lp is not None], seq.output_token_ids)
            for name, seq in seqs.items()}


def _hf_logprobs(model_dir: Path, prompt: list[int], dtype: torch.dtype) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 0.15)])
def test_packed_experts_answer_as_dequantized_and_as_transformers(mxfp4_dir: Path, dtype: torch.dtype,
                                                                   tolerance: float,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Both models on the per-expert loop (the dequantized one's grouped matmul sums in another order), so the
    packed one's numbers are the dequantized one's bit for bit; both are transformers' within the dtype's error
    (bf16: a token whose top-2 experts flip between two implementations' roundings lands further off: at most 1 in 10)."""
    monkeypatch.setattr(moe, "grouped_mm_supported", lambda device, dtype: False)
    packed, dequantized = _runner(mxfp4_dir, dtype), _runner(mxfp4_dir, dtype, dequantize_mxfp4=True)
    experts = packed.model.model.layers[0].mlp.experts
    assert isinstance(experts, Mxfp4Experts) and experts.gate_up_proj_blocks.dtype == torch.uint8
    assert type(dequantized.model.model.layers[0].mlp.experts) is Experts
    used: set[int] = set()
    spied = Mxfp4Experts.expert_weights
    monkeypatch.setattr(Mxfp4Experts, "expert_weights", lambda self, e, dt: used.add(e) or spied(self, e, dt))
    got = _batch(packed)
    assert used == {0, 1, 2, 3}  # the batch's tokens went to every expert
    assert got == _batch(dequantized)
    for name, (seed, length) in PROMPTS.items():
        expected = _hf_logprobs(mxfp4_dir / "reference", prompt_of(length, seed), dtype)
        error = (torch.tensor(got[name][0]) - expected).abs()
        assert (error > tolerance).float().mean() <= (0 if dtype == torch.float32 else 0.1)
        # bf16's matmuls round by the CPU's kernels: a prompt's mean error was 0.062 on an AVX-512 EPYC (family 25 /
        # model 17), under 0.05 on an AVX2 one; float32's bound stays tight.
        assert error.mean() < (tolerance / 3 if dtype == torch.float32 else tolerance / 2) and error.max() < 1.0
    if dtype == torch.float32:
        assert got["c"][1] == transformers_greedy(mxfp4_dir / "reference", prompt_of(40, 3), 8)


def test_a_decode_step_dequantizes_only_its_routed_experts(mxfp4_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = _runner(mxfp4_dir, torch.float32)
    calls: list[int] = []
    spied = Mxfp4Experts.expert_weights
    monkeypatch.setattr(Mxfp4Experts, "expert_weights", lambda self, e, dt: calls.append(e) or spied(self, e, dt))
    runner_greedy(runner, prompt_of(6, 1), 2, chunk=6)  # a prefill step, then one decode of one token
    decode = calls[-4 * 2:]
    assert len(calls) > 8 and len(set(calls)) == 4
    assert [len(set(decode[i: i + 2])) for i in range(0, 8, 2)] == [2] * 4  # top-2 of 4 experts, 4 layers


def test_experts_match_dequantized_ones_exactly_and_take_4_25_bits(mxfp4_dir: Path) -> None:
    """One layer's experts alone: tokens routed to different experts through both modules agree exactly."""
    generator = torch.Generator().manual_seed(1)
    weights = {leaf: torch.randn(3, out, inp, generator=generator) * 3
               for leaf, out, inp in (("gate_up_proj", 128, 64), ("down_proj", 64, 64))}
    for dtype in (torch.float32, torch.bfloat16):
        packed = Mxfp4Experts(3, 64, 64, bias=True, swiglu_limit=7.0).to(dtype)
        plain = Experts(3, 64, 64, bias=True, swiglu_limit=7.0).to(dtype)
        with torch.no_grad():
            for leaf, weight in weights.items():
                blocks, scales = pack_mxfp4(weight)
                getattr(packed, f"{leaf}_blocks").copy_(blocks)
                getattr(packed, f"{leaf}_scales").copy_(scales)
                getattr(plain, leaf).copy_(unpack_reference(blocks, scales))  # transformers' decoding
                bias = torch.randn(3, weight.shape[1], generator=generator)
                for module in (packed, plain):
                    getattr(module, f"{leaf}_bias").copy_(bias)
        x = torch.randn(7, 64, generator=generator).to(dtype)
        counts = [3, 0, 4]  # expert 1 got no token
        assert torch.equal(packed.looped(x, counts), plain.looped(x, counts))
    runner = _runner(mxfp4_dir, torch.bfloat16)
    dequantized = _runner(mxfp4_dir, torch.bfloat16, dequantize_mxfp4=True)

    def expert_bytes(r: TorchModelRunner) -> int:
        return sum(p.numel() * p.element_size() for n, p in r.model.named_parameters()
                   if ".experts." in n and not n.endswith("_bias"))
    assert expert_bytes(runner) * 16 == expert_bytes(dequantized) * 4.25  # 4 bits a weight and 8 a 32
    assert expert_bytes(dequantized) == 4 * 4 * 3 * 64 * 64 * 2  # layers x experts x gate, up, down x bf16


def test_dequantize_in_the_activation_dtype_is_the_float32_one_cast() -> None:
    generator = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 256, (2, 5, 3, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(110, 140, (2, 5, 3), dtype=torch.uint8, generator=generator)
    exact = unpack_reference(blocks.flatten(0, 1)[None], scales.flatten(0, 1)[None])[0].unflatten(0, (2, 5))
    torch.testing.assert_close(dequantize_mxfp4(blocks, scales), exact, rtol=0, atol=0)
    assert torch.equal(dequantize_mxfp4(blocks, scales, torch.bfloat16), exact.to(torch.bfloat16))


def test_two_ranks_keep_whole_blocks_and_answer_as_transformers(tmp_path: Path, mxfp4_dir: Path) -> None:
    """Each rank holds half of every expert's width, packed (gate/up rows cut per half, down's 32-value blocks
    whole); a width whose half is not whole blocks is refused, and served dequantized."""
    prompt = prompt_of(20, 6)
    runner = TorchModelRunner(mxfp4_dir, 32, 4, device="cpu", tensor_parallel_size=2)
    try:
        experts = runner.model.model.layers[0].mlp.experts
        assert isinstance(experts, Mxfp4Experts) and experts.down_proj_blocks.shape == (4, 64, 1, 16)
        assert runner_greedy(runner, prompt, 8) == transformers_greedy(mxfp4_dir / "reference", prompt, 8)
    finally:
        runner.close()
    odd = save_gpt_oss(tmp_path / "odd", mxfp4=True, intermediate_size=96)  # 48 a rank: a block and a half
    with pytest.raises(QuantizationError, match=r"expert width 48 \(96 across 2 ranks\) is not whole 32-value"):
        TorchModelRunner(odd, 32, 4, device="cpu", tensor_parallel_size=2)
    with pytest.raises(QuantizationError, match="hidden size 40 is not whole"):
        Mxfp4Experts(2, 40, 64)
    served = TorchModelRunner(odd, 32, 4, device="cpu", tensor_parallel_size=2, dequantize_mxfp4=True)
    try:
        assert runner_greedy(served, prompt, 8) == transformers_greedy(odd / "reference", prompt, 8)
    finally:
        served.close()


def test_the_roofline_prices_mxfp4_experts_at_4_25_bits() -> None:
    """gpt-oss-120b: ~65 GB packed fits one H100 with room for KV, ~234 GB in bf16 does not; a decode streams
    its routed experts at 4.25 bits."""
    big = MODELS["gpt-oss-120b"]
    bf16 = replace(big, expert_weight_bytes=0.0)
    expert_weights = big.num_experts * big.expert_params
    assert bf16.weight_memory_bytes - big.weight_memory_bytes == expert_weights * (2 - 4.25 / 8)
    assert big.weight_memory_bytes == pytest.approx(65.2e9, rel=0.01) and big.num_params == pytest.approx(116.8e9, rel=0.01)
    assert RooflineStepTime(big, GPUS["H100-SXM"]).kv_capacity_blocks() > 4096  # 64k+ tokens of KV
    with pytest.raises(ValueError, match="leaves no room for KV"):
        RooflineStepTime(bf16, GPUS["H100-SXM"]).kv_capacity_blocks()
    packed_time, bf16_time = (RooflineStepTime(m, GPUS["H100-SXM"]) for m in (big, bf16))
    assert packed_time._s_per_expert * 16 == pytest.approx(bf16_time._s_per_expert * 4.25)
    assert packed_time._s_weights == bf16_time._s_weights  # attention and the LM head stay bf16
