"""Small random DeepSeek-V2/V3 checkpoints saved by transformers itself (DeepseekV2ForCausalLM,
DeepseekV3ForCausalLM), each with what sets its kind apart, weights spread so that greedy choices are clear-cut."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.tiny_model import train_tokenizer
from tests.engine.hf_checkpoints import _spread

VOCAB = 300
# Latent 16 + rotary 8 = 24 values a token a layer, against 2 x 4 heads x (8 + 8) keys and 4 x 12 values expanded.
MLA = {"vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
       "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256, "kv_lora_rank": 16,
       "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12, "moe_intermediate_size": 16,
       "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2, "first_k_dense_replace": 1,
       "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
# YaRN x4 over 64 positions with DeepSeek's two mscales (the softmax scale takes mscale_all_dim's square).
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}
KINDS = ("v2_lite", "v2_grouped", "v3")


def hf_deepseek(kind: str, **overrides: object) -> torch.nn.Module:
    """v2_lite: V2-Lite's layout (one q_proj, softmax top-k greedy); v2_grouped: a q LoRA, group-limited greedy
    routing over 4 groups (best 2), weights x2, YaRN; v3: sigmoid scores with a correction bias, noaux_tc groups,
    renormalised weights x2.5, interleaved RoPE under YaRN."""
    import transformers as hf

    torch.manual_seed(0)
    common = {**MLA, **overrides}
    if kind == "v2_lite":
        model = hf.DeepseekV2ForCausalLM(hf.DeepseekV2Config(**common, q_lora_rank=None, topk_method="greedy"))
    elif kind == "v2_grouped":
        config = hf.DeepseekV2Config(**common, q_lora_rank=24, topk_method="group_limited_greedy", n_group=4,
                                     topk_group=2, routed_scaling_factor=2.0, rope_parameters=YARN)
        model = hf.DeepseekV2ForCausalLM(config)
    elif kind == "v3":
        config = hf.DeepseekV3Config(**common, q_lora_rank=24, n_group=4, topk_group=2, norm_topk_prob=True,
                                     routed_scaling_factor=2.5, rope_interleave=True, rope_parameters=YARN)
        model = hf.DeepseekV3ForCausalLM(config)
    else:
        raise ValueError(kind)
    model = _spread(model)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # large enough to change choices
                buffer.normal_(0.0, 0.3)
    return model


def save_deepseek(kind: str, out: Path) -> Path:
    hf_deepseek(kind).save_pretrained(out, max_shard_size="100KB")
    return out


def save_serving_deepseek(kind: str, out: Path, vocab_size: int = 512) -> Path:
    """A folder a server loads: the model over the engine's tiny byte-level BPE (engine/tiny_model.py)."""
    hf_deepseek(kind, vocab_size=vocab_size).save_pretrained(out)
    train_tokenizer(vocab_size).save(str(out / "tokenizer.json"))
    return out
