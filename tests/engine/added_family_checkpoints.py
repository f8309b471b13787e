"""Tiny random Gemma 2, GLM-4.5 (glm4_moe) and OLMo 2 checkpoints saved by transformers itself, each with what sets
its family apart switched on where a greedy answer can tell: Gemma 2's caps small enough to bind (attention scores
at 1, logits at 3) and an 8-token window, shorter than the prompts; GLM-4.5's partial rotary, q/k norms, q/k/v
biases, a dense first layer, grouped sigmoid routing with a correction bias and a scaled, shared expert and a
multi-token-prediction layer past the last; GLM-4's interleaved partial rotary, fused gate/up and four norms under
names of their own; OLMo 2's norms after each block and over the whole q/k projections; SmolLM3's NoPE layers;
Cohere2's LayerNorm, side-by-side attention and MLP, RoPE on its sliding layers only and scaled logits."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.engine.hf_checkpoints import COMMON as SIZES
from tests.engine.hf_checkpoints import VOCAB, _spread

ADDED_KINDS = ("gemma2", "gemma2_uncapped", "glm4", "glm4_moe", "olmo2", "smollm3", "cohere2")


def added_family_model(kind: str, vocab_size: int = VOCAB) -> torch.nn.Module:
    """`vocab_size`: a served folder's, room for the tiny tokenizer (engine/tiny_model.py)."""
    import transformers as hf

    torch.manual_seed(0)
    COMMON = {**SIZES, "vocab_size": vocab_size}  # noqa: N806 - the shared sizes, as hf_checkpoints names them
    if kind in ("gemma2", "gemma2_uncapped"):  # layers 0 and 2 slide over 8 tokens, 1 and 3 see everything
        capped = kind == "gemma2"
        config = hf.Gemma2Config(**{**COMMON, "num_hidden_layers": 4}, head_dim=16, query_pre_attn_scalar=24,
                                 sliding_window=8, attn_logit_softcapping=1.0 if capped else None,
                                 final_logit_softcapping=3.0 if capped else None)  # fmt: skip
        return _spread(hf.Gemma2ForCausalLM(config), embed_std=0.1)
    if kind == "glm4_moe":  # layer 0 dense, 1-2 sparse; 8 experts in 4 groups, the best 2 groups, top 2 of them
        config = hf.Glm4MoeConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=16, attention_bias=True,
                                  use_qk_norm=True, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                  n_shared_experts=1, n_group=4, topk_group=2, first_k_dense_replace=1,
                                  routed_scaling_factor=2.5, norm_topk_prob=True,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.5})  # fmt: skip
        model = _spread(hf.Glm4MoeForCausalLM(config))
        with torch.no_grad():  # a bias that changes choices (transformers initialises it to zero)
            for layer in model.model.layers[1:]:
                layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.3)
        return model
    if kind == "glm4":  # RoPE on the first half of each head, in interleaved pairs; q/k/v biases; four norms
        config = hf.Glm4Config(**COMMON, head_dim=16, pad_token_id=0, eos_token_id=None,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                "partial_rotary_factor": 0.5})  # fmt: skip
        return _spread(hf.Glm4ForCausalLM(config))
    if kind == "olmo2":
        return _spread(hf.Olmo2ForCausalLM(hf.Olmo2Config(**COMMON, pad_token_id=0, eos_token_id=None)))
    if kind == "smollm3":  # layers 1 and 3 without RoPE, sliding over 8 tokens (its use_sliding_window layout)
        config = hf.SmolLM3Config(**{**COMMON, "num_hidden_layers": 4}, no_rope_layer_interval=2,
                                  use_sliding_window=True, sliding_window=8, pad_token_id=0, eos_token_id=None)
        return _spread(hf.SmolLM3ForCausalLM(config), gain=2.0)
    if kind == "cohere2":  # layers 0 and 2 slide over 8 tokens on interleaved RoPE, 1 and 3 see all on none
        config = hf.Cohere2Config(**{**COMMON, "num_hidden_layers": 4}, sliding_window=8, sliding_window_pattern=2,
                                  logit_scale=0.5, pad_token_id=0, bos_token_id=None, eos_token_id=None)
        return _spread(hf.Cohere2ForCausalLM(config), gain=2.0, embed_std=0.3)
    raise ValueError(kind)


def save_added_family(kind: str, out: Path, vocab_size: int = VOCAB) -> Path:
    """Saved in 100 KB shards; GLM-4.5's with a multi-token-prediction layer's tensors past its last layer, in a
    shard of their own, as the Hub's checkpoints hold them (transformers skips them too)."""
    model = added_family_model(kind, vocab_size)
    model.save_pretrained(out, max_shard_size="100KB")
    if kind == "glm4_moe":
        hidden, last = model.config.hidden_size, model.config.num_hidden_layers
        mtp = {f"model.layers.{last}.eh_proj.weight": torch.randn(hidden, 2 * hidden),
               f"model.layers.{last}.enorm.weight": torch.ones(hidden),
               f"model.layers.{last}.self_attn.q_proj.weight": torch.randn(96, hidden)}
        save_file(mtp, out / "mtp.safetensors")
        index = json.loads((out / "model.safetensors.index.json").read_text())
        index["weight_map"] |= dict.fromkeys(mtp, "mtp.safetensors")
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return out
