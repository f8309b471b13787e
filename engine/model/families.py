"""What sets Gemma 3 (text, `gemma3_text`) and Phi-3 (`phi3`: Phi-3, Phi-3.5, Phi-4) apart from the Llama
layout, read from their Hugging Face configs as transformers reads them (engine/model/config.py takes the rest).

Gemma 3: RMSNorm scaling by (1 + weight) in float32, embeddings times sqrt(hidden_size), norms after the
attention and MLP outputs as well as before, per-head q/k norms, attention scaled by
`query_pre_attn_scalar ** -0.5`, a GELU-tanh gated MLP, sliding layers (`layer_types`, or every layer but
each `sliding_window_pattern`-th) on plain RoPE of base `rope_local_base_freq` while full layers take
`rope_theta` with `rope_scaling`. transformers 5 writes both RoPEs as `rope_parameters` by layer type.
Phi-3: Llama's layout with fused checkpoint tensors (the loader splits them), RoPE over the first
`partial_rotary_factor` of each head, LongRoPE (engine/model/rope.py) and, where `sliding_window` is set,
a window in every layer. A multimodal Gemma 3 folder (`gemma3`, Gemma3ForConditionalGeneration) runs its language model
from its `text_config` and the `language_model` tensors, its vision tower and projector beside it
(engine/model/vision.py; text only when sharded or quantized). A LLaVA folder (`llava`,
LlavaForConditionalGeneration) runs its language model the same way, its vision tower and projector beside it
(engine/model/vision.py)."""

from __future__ import annotations

import math

from engine.model.deepseek import DEEPSEEK_V3, DEEPSEEK_V3_ALIASES
from engine.model.qwen3_vl_config import QWEN3_VL_TYPES, qwen3_vl_text

GEMMA3 = "gemma3_text"
GEMMA3_MULTIMODAL = "gemma3"  # Gemma3ForConditionalGeneration: the 4B-27B releases, with images
PHI3 = "phi3"
LLAVA = "llava"  # LlavaForConditionalGeneration: a vision tower and projector before a Llama-family model
QWEN2_5_VL = "qwen2_5_vl"  # Qwen2_5_VLForConditionalGeneration: a vision transformer before Qwen2 on M-RoPE
# Top-level keys of a multimodal folder's config that its text model takes where `text_config` leaves them out.
_SHARED_KEYS = ("eos_token_id", "bos_token_id", "pad_token_id", "torch_dtype", "dtype", "tie_word_embeddings")
# Activations of the gated MLP, by their transformers names.
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


class UnsupportedConfig(ValueError):
    """A config this engine would serve wrongly, and why it is refused."""


def text_config_of(raw: dict) -> dict:
    """A multimodal Gemma 3 folder's language model config (the loader skips its vision tower's and
    projector's tensors: engine/model/vision.py reads them), a LLaVA folder's (its `text_config`, Llama's defaults where it leaves
    them out, as LlavaConfig's); Kimi-K2's as DeepSeek-V3's; any other config as it is."""
    if raw.get("model_type") == QWEN2_5_VL:
        return qwen2_5_vl_text(raw)
    if raw.get("model_type") in QWEN3_VL_TYPES:  # engine/model/qwen3_vl.py
        return qwen3_vl_text(raw)
    if raw.get("model_type") in DEEPSEEK_V3_ALIASES:  # DeepSeek-V3's architecture, read as its config
        return {**raw, "model_type": DEEPSEEK_V3}
    if raw.get("model_type") not in (GEMMA3_MULTIMODAL, LLAVA):
        return raw
    text = dict(raw.get("text_config") or {})
    for key in _SHARED_KEYS:
        if key in raw and key not in text:
            text[key] = raw[key]
    if raw["model_type"] == LLAVA:
        return {"vocab_size": 32_000, "model_type": "llama", **text}
    text.setdefault("vocab_size", 262_208)  # transformers' Gemma3TextConfig default, which the Hub's configs rely on
    return {**text, "model_type": GEMMA3}


def qwen2_5_vl_text(raw: dict) -> dict:
    """A Qwen2.5-VL folder's language model: Qwen2 with M-RoPE, from its `text_config` (transformers 5) or the
    top-level keys (the Hub's 4.x configs); `rope_scaling`'s `mrope_section` (with type "mrope" or "default")
    becomes the `mrope_section` key, the RoPE itself plain."""
    text = dict(raw.get("text_config") or {k: v for k, v in raw.items() if k != "vision_config"})
    for key in _SHARED_KEYS:
        if key in raw and key not in text:
            text[key] = raw[key]
    rope = dict(text.pop("rope_parameters", None) or text.pop("rope_scaling", None) or {})
    section = rope.pop("mrope_section", None)
    if section is None:
        raise UnsupportedConfig("a Qwen2.5-VL config needs rope_scaling's mrope_section")
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
        raise UnsupportedConfig(f"unsupported Qwen2.5-VL rope_type {rope.get('rope_type', rope.get('type'))!r}")
    rope_theta = rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))
    return {**text, "model_type": "qwen2", "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
            "mrope_section": [int(n) for n in section]}


def activation(model_type: str, raw: dict) -> str:
    if model_type == GEMMA3:
        name = raw.get("hidden_activation") or "gelu_pytorch_tanh"
    else:
        name = raw.get("hidden_act", "silu")
    if name not in ACTIVATIONS:
        raise UnsupportedConfig(f"unsupported hidden activation {name!r}; expected one of {ACTIVATIONS}")
    return name


def gemma3_fields(raw: dict) -> dict:
    """ModelConfig fields only Gemma 3 sets (its RoPE is read by `gemma3_rope`)."""
    if raw.get("use_bidirectional_attention"):
        raise UnsupportedConfig("use_bidirectional_attention (an embedding model's setting) is not supported: "
                                "this engine attends causally")
    return {
        "norm_unit_offset": True,
        "embed_scale": raw["hidden_size"] ** 0.5,
        "sandwich_norms": True,
        "attention_scale": float(raw.get("query_pre_attn_scalar", 256)) ** -0.5,
        "final_logit_softcapping": raw.get("final_logit_softcapping"),
        "attn_logit_softcapping": raw.get("attn_logit_softcapping"),  # Gemma 3's configs leave it null
    }


def gemma3_rope(raw: dict) -> tuple[dict, float]:
    """(the full layers' rope parameters in the classic form, the sliding layers' base): from transformers 5's
    `rope_parameters` by layer type, or the Hub's `rope_theta`, `rope_scaling` and `rope_local_base_freq`."""
    by_type = raw.get("rope_parameters") or {}
    if "full_attention" in by_type or "sliding_attention" in by_type:
        full = dict(by_type.get("full_attention") or {})
        local = dict(by_type.get("sliding_attention") or {})
    else:
        full = {**(raw.get("rope_scaling") or {}), "rope_theta": raw.get("rope_theta", 1_000_000.0)}
        local = {"rope_theta": raw.get("rope_local_base_freq", 10_000.0)}
    full.setdefault("rope_theta", 1_000_000.0)
    if (local.get("rope_type") or local.get("type") or "default") != "default":
        raise UnsupportedConfig("only plain RoPE is supported in Gemma 3's sliding layers")
    return {"rope_parameters": full}, float(local.get("rope_theta") or 10_000.0)


def gemma3_layer_types(raw: dict) -> list[str]:
    """transformers' default: every `sliding_window_pattern`-th layer (6 in Gemma 3) is full, the rest slide."""
    if raw.get("layer_types") is not None:
        return list(raw["layer_types"])
    pattern = raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(raw["num_hidden_layers"])]


def partial_rotary_factor(raw: dict) -> float:
    """Phi-4-mini rotates 3/4 of each head (top-level in Hub configs, in `rope_parameters` in transformers 5's)."""
    params = raw.get("rope_parameters") or {}
    factor = float(raw.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0)
    if not 0 < factor <= 1:
        raise UnsupportedConfig(f"partial_rotary_factor must be in (0, 1], got {factor}")
    return factor


def longrope_parameters(raw: dict, params: dict, rotary_dim: int) -> dict:
    """LongRoPE's parameters as transformers computes them: `original_max_position_embeddings` (from the
    top level where the Hub puts it), `factor` the context's growth over it where not given, and
    `attention_factor` sqrt(1 + ln(factor) / ln(original)) where not given."""
    original = params.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings")
    if not original:
        raise UnsupportedConfig("LongRoPE needs original_max_position_embeddings")
    for key in ("short_factor", "long_factor"):
        if len(params.get(key) or ()) != rotary_dim // 2:
            raise UnsupportedConfig(f"LongRoPE's {key} must hold {rotary_dim // 2} numbers (half the rotary dims)")
    factor = params.get("factor") or raw["max_position_embeddings"] / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {**params, "original_max_position_embeddings": int(original), "factor": float(factor),
            "attention_factor": float(attention_factor)}
