"""GLM-4 (`glm4`: GLM-4-9B-0414, GLM-4-32B-0414, GLM-Z1): Llama's attention with q/k/v biases (`attention_bias`, on
unless set off; o_proj never has one), RoPE over the first `partial_rotary_factor` (0.5 unless given) of each head in
interleaved pairs (transformers' Glm4 apply_rotary_pos_emb: the rotary dims de-interleaved before the engine's
half-split RoPE, as DeepSeek's: q and k permuted alike leave their dot products as they were), four norms a layer
(`post_self_attn_layernorm` on the attention's output, `post_attention_layernorm` on the MLP's input,
`post_mlp_layernorm` on its output: the loader maps them onto the sandwich norms' names) and a fused `gate_up_proj`
(split at load, as Phi-3's). Read as transformers 5's Glm4Config reads a config, its defaults included."""

from __future__ import annotations

GLM4 = "glm4"
# GLM-4's checkpoint norm names -> the decoder's sandwich norms (engine/model/llama.py), order by order of use.
NORM_NAMES = {"post_self_attn_layernorm": "post_attention_layernorm",
              "post_attention_layernorm": "pre_feedforward_layernorm", "post_mlp_layernorm": "post_feedforward_layernorm"}
_DEFAULTS = {"head_dim": 128, "attention_bias": True, "rms_norm_eps": 1.5625e-07, "max_position_embeddings": 131072,
             "vocab_size": 151552}  # fmt: skip


def glm4_config(raw: dict) -> tuple[dict, dict]:
    """(the config with Glm4Config's defaults where it leaves them out, the ModelConfig fields it sets)."""
    raw = {**_DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k not in _DEFAULTS}}
    rope = raw.get("rope_parameters") or {}
    if raw.get("partial_rotary_factor") is None and rope.get("partial_rotary_factor") is None:
        raw["partial_rotary_factor"] = 0.5
    return raw, {"o_bias": False, "sandwich_norms": True, "rope_interleave": True}


def glm4_checkpoint_name(name: str) -> str:
    """A GLM-4 checkpoint tensor's name with its norms named as the decoder's."""
    parts = name.split(".")
    if len(parts) > 1 and parts[-2] in NORM_NAMES:
        parts[-2] = NORM_NAMES[parts[-2]]
    return ".".join(parts)
