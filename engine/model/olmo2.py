"""OLMo 2 (`olmo2`): Llama's projections with norms only after each block (`post_attention_layernorm` on the
attention's output, `post_feedforward_layernorm` on the MLP's, each before the residual add; none on a block's
input), and q/k RMS-normalised over the whole projection (every head at once: `q_norm` is num_heads x head_dim wide)
before RoPE, as transformers' Olmo2Attention. That whole-projection norm needs every head, so a tensor-parallel rank,
holding some, refuses it (engine/model/llama.py)."""

from __future__ import annotations

OLMO2 = "olmo2"


def olmo2_config(raw: dict) -> tuple[dict, dict]:
    """(the config with Olmo2Config's defaults where it leaves them out, the ModelConfig fields it sets)."""
    raw = {"rms_norm_eps": 1e-5, **raw}
    return raw, {"qk_norm": True, "qk_norm_whole": True, "sandwich_norms": True, "pre_norms": False}
