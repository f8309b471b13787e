"""SmolLM3 (`smollm3`): Llama's layout in which some layers attend without RoPE (NoPE): `no_rope_layers` flags each
layer 1 (RoPE) or 0 (none), by default every `no_rope_layer_interval`-th (4) layer none; with `use_sliding_window`
the NoPE layers slide over `sliding_window` tokens (transformers' default `layer_types`). Read as transformers 5's
SmolLM3Config reads a config, its defaults included (tied embeddings)."""

from __future__ import annotations

SMOLLM3 = "smollm3"
_LAYER_TYPES = ("full_attention", "sliding_attention")


def smollm3_config(raw: dict) -> tuple[dict, dict]:
    """(the config with SmolLM3Config's defaults where it leaves them out, the ModelConfig fields it sets)."""
    raw = {"tie_word_embeddings": True, "max_position_embeddings": 32768, **raw}
    num_layers = raw["num_hidden_layers"]
    interval = raw.get("no_rope_layer_interval") or 4
    flags = raw.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(num_layers)]
    if len(flags) != num_layers:
        raise ValueError(f"no_rope_layers must flag {num_layers} layers, got {len(flags)}")
    nope = tuple(i for i, rope in enumerate(flags) if not rope)
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if window and i in nope else "full_attention" for i in range(num_layers)]
    if len(layer_types) != num_layers or set(layer_types) - set(_LAYER_TYPES):
        raise ValueError(f"layer_types must name {num_layers} layers, each one of {_LAYER_TYPES}")
    sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
    fields: dict = {"nope_layers": nope}
    if window and sliding:
        fields |= {"sliding_window": int(window), "sliding_layers": sliding}
    return raw, fields
