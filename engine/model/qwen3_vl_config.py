"""Qwen3-VL's config as the engine reads it (engine/model/qwen3_vl.py has the model code): the family's names and
its language model's config, kept free of torch so that reading a config (engine/model/families.py, which the
gateway imports) does not import it."""

from __future__ import annotations

QWEN3_VL = "qwen3_vl"
QWEN3_VL_MOE = "qwen3_vl_moe"
QWEN3_VL_TYPES = (QWEN3_VL, QWEN3_VL_MOE)
DEFAULT_MROPE_SECTION = (24, 20, 20)  # transformers' Qwen3VLTextRotaryEmbedding default


def qwen3_vl_text(raw: dict) -> dict:
    """The language model's config: Qwen3 (or Qwen3-MoE) with interleaved M-RoPE (`mrope_section`,
    `mrope_interleaved`), its RoPE otherwise plain."""
    from engine.model.families import _SHARED_KEYS, UnsupportedConfig  # families imports this module

    text = dict(raw.get("text_config") or {})
    for key in _SHARED_KEYS:
        if key in raw and key not in text:
            text[key] = raw[key]
    if "tie_word_embeddings" in raw:  # the conditional-generation model ties (or not) by its own config's key
        text["tie_word_embeddings"] = raw["tie_word_embeddings"]
    rope = dict(text.pop("rope_parameters", None) or text.pop("rope_scaling", None) or {})
    section = rope.pop("mrope_section", None) or DEFAULT_MROPE_SECTION
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
        raise UnsupportedConfig(f"unsupported Qwen3-VL rope_type {rope.get('rope_type', rope.get('type'))!r}")
    moe = raw.get("model_type") == QWEN3_VL_MOE
    extra = {"norm_topk_prob": True} if moe else {}  # Qwen3VLMoeTextTopKRouter always renormalises
    return {**text, **extra, "model_type": "qwen3_moe" if moe else "qwen3",
            "rope_parameters": {"rope_type": "default", "rope_theta": rope.get("rope_theta", 5_000_000.0)},
            "mrope_section": [int(n) for n in section], "mrope_interleaved": True}
