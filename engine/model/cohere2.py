"""Cohere2 (`cohere2`: Command R7B, Command A): one norm a layer, a LayerNorm without bias (mean-centred, in float32),
whose output feeds the attention and the MLP side by side (`hidden + attention(n) + mlp(n)`); sliding layers (all but
every `sliding_window_pattern`-th, 4, unless `layer_types` says) on RoPE in interleaved pairs over the whole head
(de-interleaved before the engine's half-split RoPE, as GLM-4's), full layers on no RoPE at all; tied embeddings and
the logits times `logit_scale`. `head_dim` is hidden_size / heads whatever the config says, as transformers 5's
Cohere2Config sets it. Read with that config's defaults."""

from __future__ import annotations

COHERE2 = "cohere2"
_LAYER_TYPES = ("full_attention", "sliding_attention")
_DEFAULTS = {"logit_scale": 0.0625, "layer_norm_eps": 1e-5, "max_position_embeddings": 8192,
             "tie_word_embeddings": True, "sliding_window": 4096, "vocab_size": 256000}  # fmt: skip


def cohere2_config(raw: dict) -> tuple[dict, dict]:
    """(the config with Cohere2Config's defaults where it leaves them out, the ModelConfig fields it sets)."""
    raw = {**_DEFAULTS, **raw}
    num_layers = raw["num_hidden_layers"]
    raw |= {"head_dim": raw["hidden_size"] // raw["num_attention_heads"], "rms_norm_eps": raw["layer_norm_eps"]}
    pattern = raw.get("sliding_window_pattern") or 4
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
    if len(layer_types) != num_layers or set(layer_types) - set(_LAYER_TYPES):
        raise ValueError(f"layer_types must name {num_layers} layers, each one of {_LAYER_TYPES}")
    sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
    full = tuple(i for i in range(num_layers) if i not in sliding)
    fields: dict = {"layer_norm": True, "parallel_block": True, "logit_scale": float(raw["logit_scale"]),
                    "rope_interleave": True, "nope_layers": full}
    if raw.get("sliding_window") and sliding:
        fields |= {"sliding_window": int(raw["sliding_window"]), "sliding_layers": sliding}
    return raw, fields
