"""Mamba-2 hybrids: IBM Granite 4.0-H (`granitemoehybrid`), Bamba (`bamba`) and NVIDIA Nemotron-H (`nemotron_h`),
read from their Hugging Face configs as transformers reads them (engine/model/config.py takes the attention
layers' numbers).

Each layer is a Mamba-2 mixer (engine/model/mamba_mixer.py) or attention, then an MLP: Bamba's gated MLP
(`feed_forward`), Granite's shared gated MLP (`shared_mlp`) plus, where `num_local_experts` > 0, a top-k
mixture of experts. Granite scales the embeddings (`embedding_multiplier`), each block's output before the
residual add (`residual_multiplier`), the attention scores (`attention_multiplier`, in place of
head_dim ** -0.5) and divides the logits by `logits_scaling`; its 4.0-H releases attend without RoPE
(`position_embedding_type` "nope"). Bamba rotates half of each head (transformers hardcodes 0.5). Nemotron-H's
layers are one block each, a norm then a mixer, attention without RoPE or a squared-ReLU MLP
(`hybrid_override_pattern` "M", "*", "-"; its experts, "E", are refused).

A mixer keeps no KV: its whole past is a per-sequence state, a conv window of the last `d_conv - 1` inputs and
the SSM state [heads, head_dim, d_state] (engine/mamba_state.py keeps one slot of each per running sequence).
What the engine does not serve on these models is refused at load (`refuse_unsupported_hybrid`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.model.families import UnsupportedConfig

BAMBA = "bamba"
GRANITE_HYBRID = "granitemoehybrid"
NEMOTRON_H = "nemotron_h"
HYBRID_TYPES = (BAMBA, GRANITE_HYBRID, NEMOTRON_H)
# Nemotron-H's `hybrid_override_pattern` letters (Hub configs) and transformers 5's `layers_block_type` names.
NEMOTRON_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
# Layer kinds by their names in configs: the Hub's Granite 4.0-H ("mamba", "attention") and transformers 5's.
MAMBA_KINDS = ("mamba", "linear_attention")
ATTENTION_KINDS = ("attention", "full_attention")
BAMBA_ROTARY_FACTOR = 0.5  # BambaConfig sets it whatever the config says


class UnsupportedHybrid(UnsupportedConfig):
    """A setting this engine would serve wrongly on a Mamba-2 hybrid, and why it is refused."""


@dataclass(frozen=True)
class HybridSpec:
    """The Mamba-2 layers' geometry and what else sets a hybrid apart from the Llama layout."""

    family: str
    mamba_layers: tuple[int, ...]
    num_heads: int
    head_dim: int
    n_groups: int
    d_state: int
    d_conv: int
    intermediate_size: int  # mamba_expand x hidden_size: the mixer's inner width
    chunk_size: int  # the SSD scan's chunk (engine/model/mamba_mixer.py)
    conv_bias: bool = True
    proj_bias: bool = False
    dt_limit: tuple[float, float] = (0.0, math.inf)
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    shared_intermediate_size: int = 0  # Granite's shared MLP
    rope: bool = True  # False: attention without positions (Granite 4.0-H's "nope", Nemotron-H)
    mlp_layers: tuple[int, ...] = ()  # Nemotron-H's layers that are an MLP alone (neither mixer nor attention)

    @property
    def layers_without_kv(self) -> int:
        return len(self.mamba_layers) + len(self.mlp_layers)

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv: x, B and C together."""
        return self.intermediate_size + 2 * self.n_groups * self.d_state

    @property
    def conv_state_shape(self) -> tuple[int, int]:
        return self.conv_dim, self.d_conv - 1

    @property
    def ssm_state_shape(self) -> tuple[int, int, int]:
        return self.num_heads, self.head_dim, self.d_state

    def state_bytes(self, element_bytes: int) -> int:
        """One sequence's state over every mixer layer: what a state slot takes."""
        conv = math.prod(self.conv_state_shape)
        ssm = math.prod(self.ssm_state_shape)
        return len(self.mamba_layers) * (conv + ssm) * element_bytes


def hybrid_fields(model_type: str, raw: dict) -> tuple[dict, dict]:
    """(`raw` with what the attention layers read fixed up, ModelConfig fields: `hybrid` and Granite's
    embedding and attention scales and experts)."""
    if model_type == NEMOTRON_H:
        raw = nemotron_h_raw(raw)
    num_layers = raw["num_hidden_layers"]
    hidden = raw["hidden_size"]
    heads = int(raw.get("mamba_n_heads", 128))
    intermediate = int(raw.get("hidden_size_for_mamba") or int(raw.get("mamba_expand", 2)) * hidden)
    head_dim = raw.get("mamba_d_head", "auto")
    head_dim = intermediate // heads if head_dim in (None, "auto") else int(head_dim)
    groups = int(raw.get("mamba_n_groups", 1))
    if head_dim * heads != intermediate or heads % groups:
        raise UnsupportedHybrid(f"mamba_n_heads x mamba_d_head must be mamba_expand x hidden_size ({intermediate}) "
                                "and mamba_n_groups must divide mamba_n_heads")
    fields: dict = {}
    common = {"family": model_type, "mamba_layers": _mamba_layers(model_type, raw, num_layers), "num_heads": heads,
              "head_dim": head_dim, "n_groups": groups, "d_state": int(raw.get("mamba_d_state", 256)),
              "d_conv": int(raw.get("mamba_d_conv", 4)), "intermediate_size": intermediate,
              "chunk_size": int(raw.get("mamba_chunk_size", 256)), "conv_bias": bool(raw.get("mamba_conv_bias", True)),
              "proj_bias": bool(raw.get("mamba_proj_bias", False)), "dt_limit": _dt_limit(raw)}
    if model_type == BAMBA:
        raw = {**raw, "partial_rotary_factor": BAMBA_ROTARY_FACTOR}
        return raw, {"hybrid": HybridSpec(**common)}
    if model_type == NEMOTRON_H:
        mlp = tuple(i for i, kind in enumerate(raw["layers_block_type"]) if kind == "mlp")
        return raw, {"hybrid": HybridSpec(**common, rope=False, mlp_layers=mlp)}
    experts = int(raw.get("num_local_experts") or 0)
    if experts:  # top-k of the router's logits, softmaxed over the k: the same weights as renormalised top-k
        fields |= {"num_experts": experts, "num_experts_per_tok": int(raw.get("num_experts_per_tok", 2)),
                   "moe_intermediate_size": raw["intermediate_size"], "norm_topk_prob": True,
                   "sparse_layers": tuple(range(num_layers))}
    spec = HybridSpec(**common, residual_multiplier=float(raw.get("residual_multiplier") or 1.0),
                      logits_scaling=float(raw.get("logits_scaling") or 1.0),
                      shared_intermediate_size=int(raw.get("shared_intermediate_size") or 0),
                      rope=raw.get("position_embedding_type") == "rope")
    fields |= {"hybrid": spec, "embed_scale": float(raw.get("embedding_multiplier") or 1.0),
               "attention_scale": float(raw.get("attention_multiplier") or 1.0)}
    return raw, fields


def nemotron_h_raw(raw: dict) -> dict:
    """Nemotron-H's config in Bamba's key names: its layer kinds (`hybrid_override_pattern` on the Hub,
    `layers_block_type` in transformers 5), the mixer's geometry (its inner width heads x head_dim) and norms."""
    kinds = raw.get("layers_block_type") or raw.get("layer_types")
    if not kinds:
        pattern = raw.get("hybrid_override_pattern") or ""
        if set(pattern) - set(NEMOTRON_PATTERN):
            raise UnsupportedHybrid(f"hybrid_override_pattern letters must be among {tuple(NEMOTRON_PATTERN)}")
        kinds = [NEMOTRON_PATTERN[letter] for letter in pattern]
    kinds = ["mamba" if k in MAMBA_KINDS else "attention" if k in ATTENTION_KINDS else k for k in kinds]
    if "moe" in kinds:
        raise UnsupportedHybrid("nemotron_h's mixture-of-experts layers (Nemotron 3 Nano's) are not supported yet")
    if set(kinds) - {"mamba", "attention", "mlp"}:
        raise UnsupportedHybrid("nemotron_h layer kinds must be mamba, attention or mlp")
    heads, head_dim = int(raw.get("mamba_num_heads", 128)), int(raw.get("mamba_head_dim", 64))
    return {**raw, "num_hidden_layers": len(kinds), "layers_block_type": kinds, "layer_types": None,
            "rms_norm_eps": raw.get("layer_norm_epsilon", 1e-5), "mamba_n_heads": heads, "mamba_d_head": head_dim,
            "mamba_expand": 1, "hidden_size_for_mamba": heads * head_dim, "mamba_n_groups": raw.get("n_groups", 8),
            "mamba_d_state": raw.get("ssm_state_size", 128), "mamba_d_conv": raw.get("conv_kernel", 4),
            "mamba_chunk_size": raw.get("chunk_size", 128), "mamba_conv_bias": raw.get("use_conv_bias", True),
            "mamba_proj_bias": raw.get("mamba_proj_bias", raw.get("use_bias", False))}


def _mamba_layers(model_type: str, raw: dict, num_layers: int) -> tuple[int, ...]:
    """Bamba lists its attention layers (`attn_layer_indices`); Granite names every layer's kind (`layer_types`,
    all Mamba where absent, as GraniteMoeHybridConfig)."""
    kinds = raw.get("layer_types") or raw.get("layers_block_type")
    if model_type == BAMBA and not kinds:
        attention = set(raw.get("attn_layer_indices") or ())
        return tuple(i for i in range(num_layers) if i not in attention)
    kinds = kinds or [MAMBA_KINDS[0]] * num_layers
    allowed = (*MAMBA_KINDS, *ATTENTION_KINDS, *(("mlp",) if model_type == NEMOTRON_H else ()))
    if len(kinds) != num_layers or set(kinds) - set(allowed):
        raise UnsupportedHybrid(f"layer_types must name {num_layers} layers, each one of {allowed}")
    return tuple(i for i, kind in enumerate(kinds) if kind in MAMBA_KINDS)


def _dt_limit(raw: dict) -> tuple[float, float]:
    """`time_step_limit` as (low, high); transformers 5 writes infinity as {"__float__": "Infinity"}."""
    limit = raw.get("time_step_limit") or (0.0, math.inf)
    low, high = (float(v["__float__"]) if isinstance(v, dict) else float(v) for v in limit)
    return low, high


def refuse_unsupported_hybrid(spec: HybridSpec | None, kv_cache_dtype: str, tensor_parallel_size: int,
                              quantized: bool, kv_tiers: bool) -> None:
    """What a hybrid's runner refuses at load: its mixers and state slots do not do these (yet)."""
    if spec is None:
        return
    problems = []
    if kv_cache_dtype != "auto":
        problems.append(f"kv_cache_dtype {kv_cache_dtype!r}")
    if tensor_parallel_size > 1:
        problems.append(f"tensor_parallel_size {tensor_parallel_size}")
    if quantized:
        problems.append("quantized weights (a quantization_config or --quantization)")
    if kv_tiers:
        problems.append("a host or disk KV tier (they hold prefix-cache blocks; a hybrid's state is not in them)")
    if problems:
        raise UnsupportedHybrid(f"{spec.family} (a Mamba-2 hybrid) does not support " + "; ".join(problems))
