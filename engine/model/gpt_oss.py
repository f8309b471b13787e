"""What sets gpt-oss (`gpt_oss`, GptOssForCausalLM: gpt-oss-20b, gpt-oss-120b) apart from the Llama layout, read
from its Hugging Face config as transformers reads it (engine/model/config.py takes the rest).

Attention: q/k/v/o biases and a learned logit per query head (`sinks`) that joins each softmax's denominator
and attends to nothing (engine/model/attention.py); layers alternate between a `sliding_window` (128) and full
attention (`layer_types`, by default sliding first), all on one YaRN RoPE (x32 over 4,096 positions, `truncate`
false). Every MLP is a mixture of experts (engine/model/moe.py): a router with a bias whose top-k logits are
softmaxed after the choice, experts with biases and a clamped SwiGLU, `(up + 1) * gate * sigmoid(1.702 gate)`
with gate <= `swiglu_limit` and |up| <= it. Checkpoint tensors (MXFP4 experts included) are turned into the
engine's layout by engine/model/gpt_oss_weights.py."""

from __future__ import annotations

GPT_OSS = "gpt_oss"
# transformers' GptOssConfig defaults, which a config.json may leave out.
DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096}
DEFAULT_ROPE_THETA = 150_000.0
DEFAULT_SLIDING_WINDOW = 128


def with_defaults(raw: dict) -> dict:
    """`raw` with transformers' defaults for the keys a gpt-oss config may leave out (the RoPE, the window,
    the layer types, attention biases)."""
    if raw.get("model_type") != GPT_OSS:
        return raw
    raw = dict(raw)
    if not (raw.get("rope_parameters") or raw.get("rope_scaling")):
        raw["rope_parameters"] = {**DEFAULT_ROPE, "rope_theta": raw.get("rope_theta") or DEFAULT_ROPE_THETA}
    raw.setdefault("rope_theta", DEFAULT_ROPE_THETA)
    raw.setdefault("sliding_window", DEFAULT_SLIDING_WINDOW)
    raw.setdefault("attention_bias", True)
    if raw.get("layer_types") is None:
        raw["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                              for i in range(raw["num_hidden_layers"])]
    return raw


def gpt_oss_experts(raw: dict) -> dict:
    """The mixture-of-experts fields (engine/model/config.py's `expert_fields`): every layer's MLP is experts
    as wide as `intermediate_size`, their top-k softmax weights not renormalised (they already sum to 1)."""
    num_experts = int(raw.get("num_local_experts") or raw.get("num_experts") or 128)
    top_k = int(raw.get("num_experts_per_tok") or raw.get("experts_per_token") or 4)
    return {"num_experts": num_experts, "num_experts_per_tok": top_k,
            "moe_intermediate_size": raw["intermediate_size"], "norm_topk_prob": False,
            "sparse_layers": tuple(range(raw["num_hidden_layers"]))}


def gpt_oss_fields(raw: dict) -> dict:
    """The other ModelConfig fields only gpt-oss sets."""
    return {"attention_sinks": True, "moe_bias": True, "topk_before_softmax": True,
            "swiglu_limit": float(raw.get("swiglu_limit") or 7.0), "swiglu_alpha": float(raw.get("swiglu_alpha") or 1.702)}
