"""Qwen2-MoE (`qwen2_moe`): a checkpoint transformers saved, with a shared expert behind its sigmoid gate beside the
routed experts (DeepSeekMoE's shared-expert code, engine/model/moe.py), generates token for token what transformers
generates, on one rank and on two tensor-parallel ranks (the shared expert cut by width, its gate whole)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.model.config import ModelConfig
from engine.tiny_moe import hf_qwen2_moe
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import random_prompt, runner_greedy, transformers_greedy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen2_moe")
    hf_qwen2_moe().save_pretrained(out, max_shard_size="100KB")
    return out


def test_generates_as_transformers(checkpoint: Path) -> None:
    prompt = random_prompt(30)
    expected = transformers_greedy(checkpoint, prompt, 12)
    assert len(set(expected)) > 5
    runner = TorchModelRunner(checkpoint, num_blocks=32, block_size=4, device="cpu")
    config = runner.config
    assert config.sparse_layers == (0, 2) and config.shared_expert_gate and config.qkv_bias
    assert runner_greedy(runner, prompt, 12) == expected
    assert config.num_params() == sum(p.numel() for p in hf_qwen2_moe().parameters())


def test_two_ranks_generate_as_transformers(checkpoint: Path) -> None:
    prompt = random_prompt(20, seed=5)
    runner = TorchModelRunner(checkpoint, 32, 4, device="cpu", tensor_parallel_size=2)
    try:
        assert runner.config.shared_expert_intermediate_size == 32
        assert runner_greedy(runner, prompt, 8) == transformers_greedy(checkpoint, prompt, 8)
    finally:
        runner.close()


def test_the_hub_config_parses() -> None:
    """Qwen1.5-MoE-A2.7B's config.json (the fields that matter): every layer sparse, a 5,632-wide shared expert."""
    config = ModelConfig.from_dict({
        "model_type": "qwen2_moe", "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
        "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
        "num_experts_per_tok": 4, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
        "decoder_sparse_step": 1, "norm_topk_prob": False, "use_sliding_window": False, "sliding_window": 32768,
        "rope_theta": 1000000.0, "max_position_embeddings": 8192})  # fmt: skip
    assert config.sparse_layers == tuple(range(24)) and config.sliding_layers == ()
    assert config.shared_expert_intermediate_size == 5632 and not config.norm_topk_prob
    assert config.num_params() == pytest.approx(14.3e9, rel=0.01)
