"""GLM-4.5 / GLM-4.6 (`glm4_moe`): Llama's attention with q/k/v biases (`attention_bias`; o_proj never has one),
per-head q/k norms where `use_qk_norm`, and RoPE over the first `partial_rotary_factor` (0.5 unless given) of each
head in the rotate-half layout (transformers' Glm4Moe apply_rotary_pos_emb: engine/model/rope.py's partial rotary);
the first `first_k_dense_replace` layers dense, the rest DeepSeek-V3's MoE (engine/model/moe.py): sigmoid scores
with `e_score_correction_bias` steering the choice only, groups ranked by their two best (`n_group`, `topk_group`),
weights renormalised where `norm_topk_prob` and scaled by `routed_scaling_factor`, and `n_shared_experts` always-on
experts. The multi-token-prediction layers (`num_nextn_predict_layers`, past the last layer in the checkpoint) are
skipped at load. Read as transformers 5's Glm4MoeConfig reads a config, its defaults included."""

from __future__ import annotations

from engine.model.deepseek import DEEPSEEK_V3, _moe_fields

GLM4_MOE = "glm4_moe"
# Glm4MoeConfig's defaults for what a config leaves out.
_DEFAULTS = {"first_k_dense_replace": 1, "n_shared_experts": 1, "n_routed_experts": 128, "n_group": 1,
             "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0, "moe_intermediate_size": 1408,
             "num_experts_per_tok": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
             "vocab_size": 151552}  # fmt: skip


def glm4_moe_config(raw: dict) -> tuple[dict, dict]:
    """(the config with Glm4MoeConfig's defaults where it leaves them out, the ModelConfig fields it sets)."""
    raw = {**_DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k not in _DEFAULTS}}
    rope = raw.get("rope_parameters") or {}
    if raw.get("partial_rotary_factor") is None and rope.get("partial_rotary_factor") is None:
        raw["partial_rotary_factor"] = 0.5
    # DeepSeek-V3's router, always: noaux_tc's sigmoid scores and bias, with GLM's group defaults.
    moe = _moe_fields(DEEPSEEK_V3, {**raw, "topk_method": "noaux_tc", "scoring_func": "sigmoid"})
    return raw, {**moe, "o_bias": False, "qk_norm": bool(raw.get("use_qk_norm", False))}
