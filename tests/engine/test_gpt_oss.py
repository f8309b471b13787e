"""gpt-oss (GptOssForCausalLM): checkpoints that transformers saved, plain and with MXFP4 experts, generate token
for token what transformers generates and score prompts as it does (sinks, alternating 8-token windows and full
layers, YaRN, biased router and experts with the clamped SwiGLU) alone, in a batch, in chunks, from a prefix
cache hit and on two tensor-parallel ranks; the release's config parses to transformers' parameter count."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model.config import ModelConfig
from engine.model.gpt_oss_weights import GptOssTensors, dequantize_mxfp4
from engine.model.quant_config import serving_scheme
from engine.roofline import ModelShape
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence
from engine.torch_runner import TorchModelRunner
from tests.engine.gpt_oss_checkpoints import (
    VOCAB,
    WINDOW,
    hf_gpt_oss,
    pack_mxfp4,
    save_gpt_oss,
    unpack_reference,
)
from tests.engine.hf_checkpoints import runner_batched_greedy, runner_greedy, transformers_greedy

# openai/gpt-oss-20b's config.json (the fields that matter).
GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "attention_bias": True, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "max_position_embeddings": 131072,
    "num_attention_heads": 64, "num_experts_per_tok": 4, "experts_per_token": 4, "num_hidden_layers": 24,
    "num_key_value_heads": 8, "num_local_experts": 32, "rms_norm_eps": 1e-05, "rope_theta": 150000,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False, "vocab_size": 201088,
    "eos_token_id": 200002, "pad_token_id": 199999,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
}  # fmt: skip


def prompt_of(length: int, seed: int = 3) -> list[int]:
    """Never token 0 (transformers' generate pads with it)."""
    rng = random.Random(seed)
    return [rng.randrange(1, VOCAB) for _ in range(length)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpt_oss")
    return {"plain": save_gpt_oss(root / "plain"), "mxfp4": save_gpt_oss(root / "mxfp4", mxfp4=True)}


def reference_dir(checkpoints: dict[str, Path], kind: str) -> Path:
    return checkpoints[kind] / "reference" if kind == "mxfp4" else checkpoints[kind]


@pytest.mark.parametrize(("kind", "length"), [("plain", 40), ("plain", 5), ("mxfp4", 40)])
def test_checkpoints_generate_as_transformers(checkpoints: dict[str, Path], kind: str, length: int) -> None:
    """A 40-token prompt in 16-token chunks is five windows long; 5 tokens and 20 new ones decode across the
    window from inside it."""
    prompt, new = prompt_of(length), 20
    expected = transformers_greedy(reference_dir(checkpoints, kind), prompt, new)
    assert len(set(expected)) > 5
    runner = TorchModelRunner(checkpoints[kind], num_blocks=32, block_size=4, device="cpu")
    assert runner_greedy(runner, prompt, new) == expected
    config = runner.config
    assert config.sliding_layers == (0, 2) and config.sliding_window == WINDOW and config.attention_sinks
    assert config.num_params() == sum(p.numel() for p in hf_gpt_oss().parameters())


def _hf_logprobs(model_dir: Path, prompt: list[int], dtype: torch.dtype) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]


def _engine(model_dir: Path, dtype: torch.dtype = torch.float32, chunk: int = 64, blocks: int = 64) -> LLMEngine:
    return LLMEngine(EngineConfig(block_size=4, num_blocks=blocks, max_model_len=256, max_num_seqs=4,
                                  max_num_batched_tokens=chunk),
                     TorchModelRunner(model_dir, blocks, 4, device="cpu", dtype=dtype))


def _run(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams) -> dict[str, Sequence]:
    seqs = {name: engine.add_request(name, prompt, params) for name, prompt in prompts.items()}
    while engine.has_unfinished():
        engine.step()
    return seqs


@pytest.mark.parametrize(("kind", "dtype", "tolerance"), [("plain", torch.float32, 1e-4), ("mxfp4", torch.float32, 1e-4),
                                                          ("plain", torch.bfloat16, 0.15)])  # fmt: skip
def test_prompt_logprobs_match_transformers_in_chunks(checkpoints: dict[str, Path], kind: str, dtype: torch.dtype,
                                                      tolerance: float) -> None:
    """Every position's log-probability of the next prompt token, the prompt prefilled 7 tokens a step."""
    prompt = prompt_of(48, seed=5)
    expected = _hf_logprobs(reference_dir(checkpoints, kind), prompt, dtype)
    seq = _run(_engine(checkpoints[kind], dtype, chunk=7), {"p": prompt},
               SamplingParams(max_tokens=1, prompt_logprobs=0))["p"]
    got = torch.tensor([lp.logprob for lp in seq.prompt_logprobs if lp is not None])
    assert expected.std() > 1.0  # varied: a broken layer shows
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)


def test_a_batch_and_a_prefix_cache_hit_answer_as_transformers(checkpoints: dict[str, Path]) -> None:
    """Four requests of different lengths decode together; a fifth shares the first's 36-token prefix and reads
    it from the cache (its windows start mid-block)."""
    prompts = {f"s{i}": prompt_of(length, seed) for i, (seed, length) in enumerate(((1, 5), (2, 23), (3, 40), (4, 11)))}
    expected = {name: transformers_greedy(checkpoints["plain"], p, 12) for name, p in prompts.items()}
    engine = _engine(checkpoints["plain"], chunk=32)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    got = _run(engine, prompts, params)
    assert {name: seq.output_token_ids for name, seq in got.items()} == expected
    shared = prompts["s2"][:36] + prompt_of(9, seed=9)
    again = _run(engine, {"hit": shared}, params)["hit"]
    assert again.num_cached_tokens == 36
    assert again.output_token_ids == transformers_greedy(checkpoints["plain"], shared, 12)


def test_two_ranks_generate_as_transformers(checkpoints: dict[str, Path]) -> None:
    """Each rank holds half the heads (and their sinks) and half of every expert's width (its gate/up bias cut
    with it, the down bias added once)."""
    prompt = prompt_of(30)
    runner = TorchModelRunner(checkpoints["mxfp4"], 32, 4, device="cpu", tensor_parallel_size=2)
    try:
        assert runner.config.num_heads == 2 and runner.config.moe_intermediate_size == 32
        assert runner_greedy(runner, prompt, 12) == transformers_greedy(reference_dir(checkpoints, "mxfp4"), prompt, 12)
    finally:
        runner.close()


def test_the_release_config_parses_as_transformers_reads_it() -> None:
    import transformers

    config = ModelConfig.from_dict(GPT_OSS_20B)
    hf_config = transformers.GptOssConfig(**{k: v for k, v in GPT_OSS_20B.items()
                                            if k not in ("architectures", "model_type", "quantization_config",
                                                         "experts_per_token", "rope_scaling", "rope_theta")},
                                          rope_parameters={**GPT_OSS_20B["rope_scaling"], "rope_theta": 150000.0})
    with torch.device("meta"):
        reference = transformers.GptOssForCausalLM(hf_config)
    assert config.num_params() == sum(p.numel() for p in reference.parameters())
    assert config.num_params() == pytest.approx(20.9e9, rel=0.01)  # "21B parameters", as OpenAI publishes
    assert config.sliding_layers == tuple(range(0, 24, 2)) and config.sparse_layers == tuple(range(24))
    assert (config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size) == (32, 4, 2880)
    assert config.rope_scaling == {"rope_type": "yarn", **GPT_OSS_20B["rope_scaling"]}
    shape = ModelShape.from_hf_config(GPT_OSS_20B)  # the roofline's: 3.6B active, 12 layers of 128-token windows
    biases_and_sinks = 24 * (64 + 32 * (1 + 2 * 2880 + 2880) + 64 * 64 + 2 * 8 * 64 + 2880) + 49 * 2880  # and norms
    assert shape.num_params == config.num_params() - biases_and_sinks  # it counts matmul weights only
    assert shape.active_layer_params + shape.lm_head_params == pytest.approx(3.6e9, rel=0.02)
    assert (shape.sliding_window, shape.num_full_layers, shape.num_sparse_layers) == (128, 12, 24)
    # Left out, transformers' defaults: YaRN x32 over 4,096 positions, 128-token windows from layer 0 on.
    bare = {k: v for k, v in GPT_OSS_20B.items() if k not in ("rope_scaling", "rope_theta", "layer_types",
                                                              "sliding_window", "attention_bias")}
    defaults = ModelConfig.from_dict(bare)
    assert (defaults.rope_theta, defaults.rope_scaling, defaults.sliding_layers, defaults.qkv_bias) == (
        150000.0, config.rope_scaling, config.sliding_layers, True)


def test_mxfp4_unpacks_as_transformers_and_a_lone_half_is_refused(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 6, 2, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(120, 134, (3, 6, 2), dtype=torch.uint8, generator=generator)
    torch.testing.assert_close(dequantize_mxfp4(blocks, scales), unpack_reference(blocks, scales), rtol=0, atol=0)
    weight = torch.randn(2, 4, 64, generator=generator)
    packed = pack_mxfp4(weight)
    assert (dequantize_mxfp4(*packed) - weight).abs().max() <= weight.abs().amax() / 4  # E2M1's coarse grid
    tensors = GptOssTensors()
    assert tensors.convert("model.layers.0.mlp.experts.down_proj_blocks", packed[0]) == []
    with pytest.raises(ValueError, match="down_proj_blocks without its scales"):
        tensors.finish()
    model_dir = save_gpt_oss(tmp_path / "m", mxfp4=True)
    assert serving_scheme(model_dir, None) is None  # not a projection scheme: the experts are dequantized


def test_runner_steps_share_one_batch_with_a_decode_past_the_window(checkpoints: dict[str, Path]) -> None:
    """A decode whose window starts mid-block beside a prefill chunk in the same step: each answers as alone."""
    runner = TorchModelRunner(checkpoints["plain"], num_blocks=64, block_size=4, device="cpu")
    long, short = prompt_of(30, 7), prompt_of(13, 8)
    alone = [runner_greedy(runner, p, 6, chunk=64) for p in (long, short)]
    assert runner_batched_greedy(runner, [long, short], 6, chunk=5, blocks_each=30) == alone
