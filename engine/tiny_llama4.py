"""Tiny random Llama 4 models saved by transformers' own classes (Llama4ForCausalLM, or Llama4ForConditionalGeneration
with a tiny vision tower), as `pitstop engine make-tiny-model --family llama4` writes them (engine/tiny_moe.py) and
tests/engine/test_llama4.py compares against: 4 layers, 0-2 chunked RoPE layers over 8-token chunks and 3 a global
NoPE layer, dense layers 0 and 2 and MoE layers 1 and 3 (4 experts, top 1, a shared expert), llama3-scaled RoPE,
q/k L2 norms and a query temperature that moves from position 3 on (floor_scale 4, attn_scale 0.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is built: the CLI reads the family names at its start
    import torch

CHUNK = 8
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
LLAMA4_TEXT = {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 32, "intermediate_size_mlp": 96,
               "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8,
               "max_position_embeddings": 256, "num_local_experts": 4, "num_experts_per_tok": 1,
               "interleave_moe_layer_step": 2, "attention_chunk_size": CHUNK, "floor_scale": 4, "attn_scale": 0.5,
               "rope_parameters": LLAMA3_ROPE, "pad_token_id": 0}  # fmt: skip


def hf_llama4(seed: int = 0, multimodal: bool = False, **overrides: object) -> torch.nn.Module:
    """Weights spread (engine/tiny_moe.py's spread_weights; the stacked experts over their real fan-in, routers
    decisive) so greedy choices are clear-cut."""
    import torch
    import transformers as hf

    from engine.tiny_moe import spread_weights

    torch.manual_seed(seed)
    text = hf.Llama4TextConfig(**{**LLAMA4_TEXT, **overrides})
    if multimodal:
        vision = hf.Llama4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=28, patch_size=14, vision_output_dim=16, projector_input_dim=16,
                                       projector_output_dim=text.hidden_size, pixel_shuffle_ratio=0.5)  # fmt: skip
        model = hf.Llama4ForConditionalGeneration(hf.Llama4Config(text_config=text.to_dict(),
                                                                  vision_config=vision.to_dict()))
    else:
        model = hf.Llama4ForCausalLM(text)
    model = spread_weights(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # [experts, in, out]
                param.normal_(0.0, param.shape[1] ** -0.5)
            elif name.endswith("router.weight"):
                param.normal_(0.0, 4.0 / param.shape[-1] ** 0.5)
    return model
