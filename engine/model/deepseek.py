"""What sets DeepSeek-V2 (`deepseek_v2`: V2, V2-Lite, V2.5) and DeepSeek-V3 (`deepseek_v3`: V3, R1, Moonlight;
Kimi-K2's `kimi_k2`, read as V3's) apart from the Llama layout, read from their Hugging Face configs as
transformers reads them (engine/model/config.py takes the rest).

Attention is multi-head latent attention (engine/model/mla.py): each token's keys and values are one latent of
`kv_lora_rank` values plus one `qk_rope_head_dim` rotary key shared by every head, and the KV cache stores that
latent (576 values a token a layer for V3) rather than per-head keys and values. As transformers' configs do,
`head_dim` here is the rotary part (`qk_rope_head_dim`), so engine/model/rope.py turns exactly it; under YaRN the
softmax scale is `qk_head_dim ** -0.5` times mscale(`mscale_all_dim`) squared.

The MLPs (DeepSeekMoE, engine/model/moe.py): the first `first_k_dense_replace` layers dense, the rest routed
experts plus `n_shared_experts` always-on ones (one MLP `n_shared_experts` experts wide); V2 scores experts by
softmax (top-k `greedy`, or `group_limited_greedy` among the `topk_group` best of `n_group` groups by their best
expert), V3 by sigmoid with `e_score_correction_bias` added for the choice only (`noaux_tc`: groups ranked by
their two best), the chosen weights renormalised where `norm_topk_prob`, then times `routed_scaling_factor`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.model.config import ModelConfig

DEEPSEEK_V2 = "deepseek_v2"
DEEPSEEK_V3 = "deepseek_v3"
DEEPSEEK_TYPES = (DEEPSEEK_V2, DEEPSEEK_V3)
# Configs of DeepSeek-V3's architecture under another model_type: Kimi-K2's (moonshotai/Kimi-K2-Instruct).
DEEPSEEK_V3_ALIASES = ("kimi_k2",)
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
# Multi-token-prediction layers (V3's `num_nextn_predict_layers`) sit past the last layer in the checkpoint.
MTP_LAYERS_KEY = "num_nextn_predict_layers"


def deepseek_fields(raw: dict) -> dict:
    """The ModelConfig fields of a DeepSeek config: MLA's sizes, the softmax scale, and DeepSeekMoE's."""
    model_type = raw["model_type"]
    nope, rope_dim = int(raw.get("qk_nope_head_dim", 128)), int(raw.get("qk_rope_head_dim", 64))
    attention_bias = bool(raw.get("attention_bias", False))
    fields = {
        "kv_lora_rank": int(raw.get("kv_lora_rank", 512)),
        "q_lora_rank": raw.get("q_lora_rank", 1536) or 0,
        "qk_nope_head_dim": nope,
        "v_head_dim": int(raw.get("v_head_dim") or 128),
        "rope_interleave": bool(raw.get("rope_interleave", True)),
        "attention_scale": softmax_scale(raw, nope + rope_dim),
        "qkv_bias": attention_bias,
        "o_bias": attention_bias,
        "head_dim": rope_dim,
    }
    return fields | _moe_fields(model_type, raw)


def softmax_scale(raw: dict, qk_head_dim: int) -> float:
    """transformers' `yarn_apply_mscale`: under a scaled RoPE with `mscale_all_dim`, every dim's logits (not
    only the rotary ones YaRN's attention factor scales) grow by mscale squared."""
    scale = qk_head_dim**-0.5
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    mscale_all_dim = rope.get("mscale_all_dim") or 0
    if rope_type != "default" and mscale_all_dim:
        scale *= yarn_mscale(rope.get("factor") or 1.0, mscale_all_dim) ** 2
    return scale


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's logit growth for a context `factor` times the original: 0.1 mscale ln(factor) + 1 (engine/model/rope.py
    scales cos and sin by it, DeepSeek's softmax scale by its square)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _moe_fields(model_type: str, raw: dict) -> dict:
    v3 = model_type == DEEPSEEK_V3
    num_experts = int(raw.get("n_routed_experts") or raw.get("num_local_experts") or raw.get("num_experts") or 0)
    if not num_experts:
        return {}
    topk_method = raw.get("topk_method") or ("noaux_tc" if v3 else "greedy")
    scoring = raw.get("scoring_func") or ("sigmoid" if v3 else "softmax")
    if topk_method not in TOPK_METHODS or scoring not in SCORING_FUNCS:
        raise ValueError(f"{model_type}: topk_method {topk_method!r} / scoring_func {scoring!r} is not supported; "
                         f"expected one of {TOPK_METHODS} / {SCORING_FUNCS}")
    n_group = int(raw.get("n_group") or (8 if v3 else 1))
    topk_group = int(raw.get("topk_group") or (4 if v3 else 1))
    if topk_method == "greedy":
        n_group = topk_group = 1
    if num_experts % n_group or not 0 < topk_group <= n_group:
        raise ValueError(f"{model_type}: n_group {n_group} must divide {num_experts} experts and topk_group "
                         f"{topk_group} be between 1 and it")
    first_dense = int(raw.get("first_k_dense_replace") or 0)
    num_shared = int(raw.get("n_shared_experts") or 0)
    moe_size = int(raw["moe_intermediate_size"])
    return {"num_experts": num_experts, "num_experts_per_tok": int(raw["num_experts_per_tok"]),
            "moe_intermediate_size": moe_size,
            "norm_topk_prob": bool(raw.get("norm_topk_prob", v3)),
            "sparse_layers": tuple(range(first_dense, raw["num_hidden_layers"])),
            "shared_expert_intermediate_size": num_shared * moe_size,
            "routed_scaling_factor": float(raw.get("routed_scaling_factor") or 1.0),
            "scoring_func": scoring, "n_group": n_group, "topk_group": topk_group,
            "score_correction_bias": topk_method == "noaux_tc"}


def refuse_unsupported(config: ModelConfig, kv_cache_dtype: str, tensor_parallel_size: int, quantized: bool) -> None:
    """A DeepSeek (MLA) model refuses, at load, what its latent cache and attention do not do (yet)."""
    if not config.mla:
        return
    problems = []
    if kv_cache_dtype != "auto":
        problems.append(f"kv_cache_dtype {kv_cache_dtype!r} (the latent cache is kept in the model's dtype)")
    if tensor_parallel_size > 1:
        problems.append(f"tensor_parallel_size {tensor_parallel_size} (MLA's latent is shared by every head)")
    if quantized:
        problems.append("quantized weights (a quantization_config or --quantization)")
    if problems:
        raise ValueError(f"{config.model_type} (multi-head latent attention) does not support " + "; ".join(problems))
