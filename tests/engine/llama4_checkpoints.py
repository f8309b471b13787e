"""Tiny random Llama 4 checkpoints saved by transformers itself: 4 layers (0-2 chunked RoPE layers over 8-token
chunks, 3 a global NoPE layer), dense layers 0 and 2 and MoE layers 1 and 3 (4 experts, top 1, a shared expert),
llama3-scaled RoPE, q/k L2 norms, and a temperature that moves from position 3 on (floor_scale 4, attn_scale 0.5)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.tiny_moe import spread_weights
from tests.engine.hf_checkpoints import COMMON, LLAMA3_ROPE

CHUNK = 8
TEXT = {**COMMON, "num_hidden_layers": 4, "head_dim": 8, "intermediate_size": 32, "intermediate_size_mlp": 96,
        "num_local_experts": 4, "num_experts_per_tok": 1, "interleave_moe_layer_step": 2,
        "attention_chunk_size": CHUNK, "floor_scale": 4, "attn_scale": 0.5, "rope_parameters": LLAMA3_ROPE}  # fmt: skip


def llama4_model(multimodal: bool = False, vocab_size: int = COMMON["vocab_size"]) -> torch.nn.Module:
    """Llama4ForCausalLM, or (`multimodal`) a Llama4ForConditionalGeneration with a tiny vision tower."""
    import transformers as hf

    torch.manual_seed(0)
    text = hf.Llama4TextConfig(**{**TEXT, "vocab_size": vocab_size}, pad_token_id=0)
    if not multimodal:
        return _spread_experts(spread_weights(hf.Llama4ForCausalLM(text)))
    vision = hf.Llama4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=28, patch_size=14, vision_output_dim=16, projector_input_dim=16,
                                   projector_output_dim=48, pixel_shuffle_ratio=0.5)  # fmt: skip
    config = hf.Llama4Config(text_config=text.to_dict(), vision_config=vision.to_dict())
    return _spread_experts(spread_weights(hf.Llama4ForConditionalGeneration(config)))


def _spread_experts(model: torch.nn.Module) -> torch.nn.Module:
    """The stacked experts drawn over their real fan-in ([experts, in, out]: spread_weights reads the last dim)
    and routers decisive."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                param.normal_(0.0, param.shape[1] ** -0.5)
            elif name.endswith("router.weight"):
                param.normal_(0.0, 4.0 / param.shape[-1] ** 0.5)
    return model


def save_llama4(out: Path, multimodal: bool = False, vocab_size: int = COMMON["vocab_size"]) -> Path:
    """`vocab_size`: a served folder's, room for the tiny tokenizer (engine/tiny_model.py)."""
    llama4_model(multimodal, vocab_size).save_pretrained(out, max_shard_size="100KB")
    return out
