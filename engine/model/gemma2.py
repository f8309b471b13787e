"""Gemma 2 (`gemma2`): Gemma 3's layout (engine/model/families.py: (1 + weight) RMSNorm, scaled embeddings, norms
before and after each block, `query_pre_attn_scalar`, GELU-tanh) without per-head q/k norms, on one plain RoPE, with
the attention scores soft-capped at `attn_logit_softcapping` (engine/model/attention.py) and the final logits at
`final_logit_softcapping`, every second layer (the first, third, ...) sliding over `sliding_window` tokens. Read as
transformers 5's Gemma2Config reads a config, its defaults included (both caps on, 50 and 30)."""

from __future__ import annotations

from engine.model.families import gemma3_fields

GEMMA2 = "gemma2"
_LAYER_TYPES = ("full_attention", "sliding_attention")


def gemma2_config(raw: dict) -> tuple[dict, dict]:
    """(the config with Gemma2Config's defaults where it leaves them out, the ModelConfig fields it sets)."""
    raw = {"head_dim": 256, "max_position_embeddings": 8192, "tie_word_embeddings": True, **raw,
           "hidden_act": raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"}
    fields = gemma3_fields(raw) | {
        "final_logit_softcapping": raw.get("final_logit_softcapping", 30.0),
        "attn_logit_softcapping": raw.get("attn_logit_softcapping", 50.0),
    }
    return raw, fields | sliding_fields(raw)


def sliding_fields(raw: dict) -> dict:
    """transformers' default `layer_types`: layer i slides where i + 1 is odd; no window (None): none slides."""
    num_layers = raw["num_hidden_layers"]
    window = raw.get("sliding_window", 4096)
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
    if len(layer_types) != num_layers or set(layer_types) - set(_LAYER_TYPES):
        raise ValueError(f"layer_types must name {num_layers} layers, each one of {_LAYER_TYPES}")
    sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
    if not window or not sliding:
        return {}
    return {"sliding_window": int(window), "sliding_layers": sliding}
