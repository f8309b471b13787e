"""Tiny random Mamba-2 hybrids saved by transformers itself (Bamba, Granite 4.0-H), weights spread so greedy
tokens depend on context, and the Hub configs whose fields matter."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.tiny_model import train_tokenizer
from engine.tiny_moe import spread_weights

KINDS = ("bamba", "granite", "granite_nope", "nemotron_h")
# Mixers with 2 groups of 4 heads, a 8-token SSD chunk (prompts span several), the second layer attention.
MAMBA = {"mamba_n_heads": 8, "mamba_d_head": 12, "mamba_n_groups": 2, "mamba_d_state": 16, "mamba_chunk_size": 8}
COMMON = {"hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2,
          "max_position_embeddings": 256, **MAMBA}  # fmt: skip
# ibm-granite/granite-4.0-h-tiny's config.json (the fields that matter).
GRANITE_4_H_TINY = {
    "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid", "vocab_size": 100352,
    "hidden_size": 1536, "intermediate_size": 512, "shared_intermediate_size": 1024, "num_hidden_layers": 40,
    "num_attention_heads": 12, "num_key_value_heads": 4, "num_local_experts": 64, "num_experts_per_tok": 6,
    "layer_types": ["mamba"] * 5 + ["attention"] + (["mamba"] * 9 + ["attention"]) * 3 + ["mamba"] * 4,
    "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 128, "mamba_d_conv": 4,
    "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True, "mamba_proj_bias": False,
    "embedding_multiplier": 12, "attention_multiplier": 0.0078125, "residual_multiplier": 0.22,
    "logits_scaling": 6, "position_embedding_type": "nope", "rms_norm_eps": 1e-5, "rope_theta": 10000,
    "max_position_embeddings": 131072, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "eos_token_id": 100257,
}  # fmt: skip
# ibm-ai-platform/Bamba-9B's config.json (the fields that matter).
BAMBA_9B = {
    "architectures": ["BambaForCausalLM"], "model_type": "bamba", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "attn_layer_indices": [9, 18, 27], "mamba_n_heads": 128, "mamba_d_head": 64, "mamba_n_groups": 1,
    "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 262144, "torch_dtype": "bfloat16", "eos_token_id": 128001,
}  # fmt: skip


# nvidia/Nemotron-H-8B-Base-8K's config.json (the fields that matter).
NEMOTRON_H_8B = {
    "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "vocab_size": 131072, "hidden_size": 4096,
    "intermediate_size": 21504, "num_hidden_layers": 52, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hybrid_override_pattern": "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-",
    "mamba_num_heads": 128, "mamba_head_dim": 64, "ssm_state_size": 128, "n_groups": 8, "conv_kernel": 4,
    "chunk_size": 128, "mlp_hidden_act": "relu2", "layer_norm_epsilon": 1e-5, "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16", "eos_token_id": 2,
}  # fmt: skip


def hf_hybrid(kind: str, vocab_size: int = 300) -> torch.nn.Module:
    """bamba: attention in layer 1, half of each head rotated. granite: experts beside the shared MLP, every
    Granite multiplier away from 1, RoPE. granite_nope: the 4.0-H releases' layout, attention without positions,
    the Hub's layer kind names, no experts, tied embeddings."""
    import transformers as hf

    torch.manual_seed(0)
    if kind == "bamba":
        config = hf.BambaConfig(**COMMON, vocab_size=vocab_size, intermediate_size=96, attn_layer_indices=[1])
        return spread_weights(hf.BambaForCausalLM(config))
    scales = {"embedding_multiplier": 2.0, "attention_multiplier": 0.15, "residual_multiplier": 0.7,
              "logits_scaling": 1.5}
    if kind == "granite":
        config = hf.GraniteMoeHybridConfig(**COMMON, **scales, vocab_size=vocab_size, intermediate_size=32,
                                           num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=64,
                                           position_embedding_type="rope",
                                           layer_types=["linear_attention", "full_attention", "linear_attention"])
        return spread_weights(hf.GraniteMoeHybridForCausalLM(config))
    if kind == "granite_nope":
        config = hf.GraniteMoeHybridConfig(**COMMON, **scales, vocab_size=vocab_size, intermediate_size=32,
                                           num_local_experts=0, shared_intermediate_size=64, tie_word_embeddings=True,
                                           position_embedding_type="nope",
                                           layer_types=["linear_attention", "full_attention", "linear_attention"])
        return spread_weights(hf.GraniteMoeHybridForCausalLM(config), gain=3.0, embed_std=0.5)
    if kind == "nemotron_h":  # one block a layer: a mixer, a squared-ReLU MLP, attention (no RoPE), a mixer, an MLP
        config = hf.NemotronHConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_attention_heads=6,
                                    num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                                    layers_block_type=["mamba", "mlp", "attention", "mamba", "mlp"], mamba_num_heads=8,
                                    mamba_head_dim=12, n_groups=2, ssm_state_size=16, chunk_size=8)
        return spread_weights(hf.NemotronHForCausalLM(config))
    raise ValueError(kind)


def save_hybrid(kind: str, out: Path) -> Path:
    hf_hybrid(kind).save_pretrained(out, max_shard_size="100KB")
    if kind == "granite_nope":  # as the Hub writes Granite 4.0-H's layer kinds
        config = (out / "config.json").read_text().replace('"linear_attention"', '"mamba"')
        (out / "config.json").write_text(config.replace('"full_attention"', '"attention"'))
    return out


def save_serving_hybrid(kind: str, out: Path, vocab_size: int = 512) -> Path:
    """A folder a server loads: the model over the engine's tiny byte-level BPE (engine/tiny_model.py)."""
    hf_hybrid(kind, vocab_size).save_pretrained(out)
    train_tokenizer(vocab_size).save(str(out / "tokenizer.json"))
    return out
