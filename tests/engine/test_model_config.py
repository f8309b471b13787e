"""ModelConfig parsing of real-world config.json shapes, RoPE scaling against transformers, and loading
checkpoints that transformers itself saved (Qwen2 with biases and tied embeddings, Llama-3 RoPE, shards)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.model.config import ModelConfig
from engine.model.rope import inverse_frequencies
from engine.torch_runner import TorchModelRunner
from tests.engine.hf_checkpoints import (
    hf_model,
    random_prompt,
    runner_greedy,
    save_hf_model,
    transformers_greedy,
)

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
}  # fmt: skip
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_sliding_window": False, "sliding_window": 32768, "eos_token_id": 151643,
    "hidden_act": "silu",
}  # fmt: skip


def test_llama31_config() -> None:
    config = ModelConfig.from_dict(LLAMA_31_8B)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (32, 32, 8, 128)
    assert config.rope_type == "llama3" and config.rope_scaling["factor"] == 8.0
    assert config.eos_token_ids == (128001, 128008, 128009)
    assert config.torch_dtype == "bfloat16" and not config.qkv_bias
    assert config.num_params() == 8_030_261_248


def test_qwen2_config() -> None:
    config = ModelConfig.from_dict(QWEN25_05B)
    assert config.qkv_bias and not config.o_bias and config.tie_word_embeddings
    assert (config.head_dim, config.num_kv_heads, config.rope_theta) == (64, 2, 1e6)
    assert config.num_params() == 494_032_768


def test_transformers5_rope_parameters_and_rejections() -> None:
    v5 = {**LLAMA_31_8B, "dtype": "bfloat16", "rope_parameters": {"rope_theta": 500000.0, **LLAMA_31_8B["rope_scaling"]}}
    del v5["rope_scaling"], v5["rope_theta"], v5["torch_dtype"]
    assert ModelConfig.from_dict(v5) == ModelConfig.from_dict(LLAMA_31_8B)
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig.from_dict({**LLAMA_31_8B, "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}})
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_dict({**LLAMA_31_8B, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig.from_dict({**QWEN25_05B, "use_sliding_window": True, "sliding_window": 0, "max_window_layers": 0})


@pytest.mark.parametrize("scaling", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "linear", "factor": 2.0},
    None,
])  # fmt: skip
def test_rope_frequencies_match_transformers(scaling: dict | None) -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    raw = {**LLAMA_31_8B, "rope_scaling": scaling}
    hf = LlamaRotaryEmbedding(LlamaConfig(**{k: v for k, v in raw.items() if k != "architectures"}))
    assert torch.equal(inverse_frequencies(ModelConfig.from_dict(raw)), hf.inv_freq)


@pytest.mark.parametrize("kind", ["qwen2", "llama3"])
def test_checkpoints_saved_by_transformers_generate_identically(tmp_path: Path, kind: str) -> None:
    model_dir = save_hf_model(kind, tmp_path / kind)
    assert (model_dir / "model.safetensors.index.json").exists()
    prompt = random_prompt()  # past original_max_position_embeddings
    expected = transformers_greedy(model_dir, prompt, 16)
    assert len(set(expected)) > 5

    runner = TorchModelRunner(model_dir, num_blocks=32, block_size=8, device="cpu")
    config = runner.config
    assert config.num_params() == sum(p.numel() for p in hf_model(kind).parameters())
    assert config.qkv_bias and config.o_bias == (kind == "llama3") and config.tie_word_embeddings == (kind == "qwen2")
    assert runner_greedy(runner, prompt, 16) == expected
