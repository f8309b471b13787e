"""Llama 4 (Scout, Maverick) text models as transformers 5's Llama4TextConfig reads them: `llama4_text`
(Llama4ForCausalLM) or a `llama4` folder's `text_config` (Llama4ForConditionalGeneration's language model, served
text-only: the loader skips its vision tower). What sets it apart (engine/model/llama4.py runs it):

- iRoPE: the layers `no_rope_layers` marks 1 (all but every 4th by default) take RoPE in interleaved (complex)
  pairs and attend within aligned chunks of `attention_chunk_size` tokens; the others take no RoPE, attend to the
  whole context and scale their queries by log1p(floor((position + 1) / floor_scale)) x attn_scale + 1.
- the RoPE layers' q and k L2-normalised per head after RoPE (`use_qk_norm`; a weightless RMSNorm).
- MoE layers (`moe_layers`, else every `interleave_moe_layer_step`-th): top-1 sigmoid routing whose score scales the
  expert's *input*, plus an always-on shared expert, both `intermediate_size` wide; dense layers' MLP is
  `intermediate_size_mlp` wide.

Chunked layers are the engine's sliding layers with a window of one chunk (engine/model/attention.py masks each
query to its own chunk): the window keeps every key a chunk can see, so the KV groups release blocks behind it as
they do a sliding window's (engine/kv_groups.py), and a prefix-cache hit keeps what the next chunk needs."""

from __future__ import annotations

from dataclasses import dataclass

from engine.model.families import UnsupportedConfig

LLAMA4_TEXT = "llama4_text"
LLAMA4 = "llama4"  # the multimodal folder's
_LAYER_TYPES = ("full_attention", "chunked_attention")
_DEFAULTS = {"vocab_size": 202048, "hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
             "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
             "max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-5, "num_experts_per_tok": 1,
             "num_local_experts": 16, "interleave_moe_layer_step": 1, "use_qk_norm": True,
             "no_rope_layer_interval": 4, "attention_chunk_size": 8192, "attn_temperature_tuning": True,
             "floor_scale": 8192, "attn_scale": 0.1, "hidden_act": "silu", "tie_word_embeddings": False,
             "rope_theta": 500000.0}  # fmt: skip


@dataclass(frozen=True)
class Llama4Spec:
    """The RoPE layers' per-head L2 norm of q and k; the NoPE layers' query temperature (None: off)."""

    qk_l2_norm: bool
    temperature: tuple[float, float] | None  # (floor_scale, attn_scale)


def llama4_config(raw: dict) -> tuple[dict, dict]:
    """(the text config with Llama4TextConfig's defaults where it leaves them out, the ModelConfig fields it sets)."""
    if raw.get("model_type") == LLAMA4:
        raw = {**(raw.get("text_config") or {}), "model_type": LLAMA4_TEXT}
    explicit_nulls = {k for k, v in raw.items() if v is None}
    # As Llama4TextConfig: a key left out (or null) takes its default, but a null `attention_chunk_size` means no
    # chunks and a null `head_dim` hidden / heads.
    raw = {**_DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k == "attention_chunk_size"}}
    raw["head_dim"] = raw["head_dim"] if "head_dim" not in explicit_nulls else raw["hidden_size"] // raw["num_attention_heads"]
    if raw.get("hidden_act") != "silu":
        raise UnsupportedConfig(f"Llama 4 with hidden_act {raw['hidden_act']!r}: only silu is served")
    if raw.get("attention_bias"):
        raise UnsupportedConfig("Llama 4 with attention_bias: not served")
    num_layers = raw["num_hidden_layers"]
    rope_flags = raw.get("no_rope_layers") or [int((i + 1) % raw["no_rope_layer_interval"] != 0) for i in range(num_layers)]
    step = raw["interleave_moe_layer_step"]
    moe_layers = raw.get("moe_layers")
    moe_layers = list(range(step - 1, num_layers, step)) if moe_layers is None else moe_layers
    chunk = raw.get("attention_chunk_size")
    layer_types = raw.get("layer_types") or [
        "chunked_attention" if uses_rope and chunk is not None else "full_attention" for uses_rope in rope_flags]
    if len(rope_flags) != num_layers or len(layer_types) != num_layers or set(layer_types) - set(_LAYER_TYPES):
        raise UnsupportedConfig(f"Llama 4's no_rope_layers and layer_types must name {num_layers} layers, "
                                f"each type one of {_LAYER_TYPES}")
    chunked = tuple(i for i, kind in enumerate(layer_types) if kind == "chunked_attention")
    if chunked and not chunk:
        raise UnsupportedConfig("Llama 4 chunked_attention layers need attention_chunk_size")
    fields: dict = {
        "intermediate_size": int(raw["intermediate_size_mlp"]), "rope_interleave": True,
        "nope_layers": tuple(i for i, uses_rope in enumerate(rope_flags) if not uses_rope),
        "llama4": Llama4Spec(bool(raw["use_qk_norm"]),
                             (float(raw["floor_scale"]), float(raw["attn_scale"])) if raw["attn_temperature_tuning"] else None),
    }
    if moe_layers:
        size = int(raw["intermediate_size"])
        fields |= {"num_experts": int(raw["num_local_experts"]), "num_experts_per_tok": int(raw["num_experts_per_tok"]),
                   "moe_intermediate_size": size, "shared_expert_intermediate_size": size, "scoring_func": "sigmoid",
                   "norm_topk_prob": False, "sparse_layers": tuple(moe_layers)}
    if chunked:
        fields |= {"sliding_window": int(chunk), "sliding_layers": chunked, "attention_chunk": int(chunk)}
    return raw, fields
