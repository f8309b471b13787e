"""ModelConfig: the handful of numbers the decoder needs, parsed from a Hugging Face `config.json`
(Llama, Mistral, Qwen2 and Qwen3 families, the mixture-of-experts Qwen3-MoE and Mixtral, and Gemma 3 text and
Phi-3 (engine/model/families.py), gpt-oss (engine/model/gpt_oss.py), DeepSeek-V2/V3 (engine/model/deepseek.py), Gemma 2,
GLM-4.5 and OLMo 2 (engine/model/added_families.py); both the classic `rope_theta`/`rope_scaling` keys and the transformers-5
`rope_parameters` dict)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.model import families
from engine.model.added_families import ADDED_FAMILIES
from engine.model.deepseek import DEEPSEEK_TYPES, deepseek_fields
from engine.model.families import GEMMA3, PHI3
from engine.model.gpt_oss import GPT_OSS, gpt_oss_experts, gpt_oss_fields, with_defaults
from engine.model.llama4_config import Llama4Spec
from engine.model.mamba_config import HYBRID_TYPES, HybridSpec, hybrid_fields

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mixtral", GEMMA3, PHI3,
                         GPT_OSS, *DEEPSEEK_TYPES, *ADDED_FAMILIES)
SUPPORTED_MODEL_TYPES += HYBRID_TYPES  # Mamba-2 hybrids: Bamba, Granite 4.0-H (engine/model/mamba_config.py)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")
# Families that RMS-normalise each head's query and key before RoPE.
QK_NORM_MODEL_TYPES = ("qwen3", "qwen3_moe", GEMMA3)
# Mistral's config carries `sliding_window` (a window in use when set); Qwen's only slides with the flag on.
SLIDING_FLAG_MODEL_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Extra RoPE parameters for scaled variants (`rope_type` plus e.g. `factor`); None for plain RoPE.
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # Mixture of experts: each listed layer's MLP is `num_experts` experts of `moe_intermediate_size`,
    # `num_experts_per_tok` of them chosen per token by a linear router (none listed: a dense model).
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # renormalise the chosen experts' softmax weights to sum to 1
    sparse_layers: tuple[int, ...] = ()
    # gpt-oss (engine/model/gpt_oss.py): a learned softmax sink per head, router and expert biases, the top-k
    # logits softmaxed after the choice, and a SwiGLU clamped at `swiglu_limit` (None: plain SwiGLU).
    attention_sinks: bool = False
    moe_bias: bool = False
    topk_before_softmax: bool = False
    swiglu_limit: float | None = None
    swiglu_alpha: float = 1.702
    # DeepSeekMoE (engine/model/deepseek.py): always-on shared experts (0: none), V3's sigmoid scores with a
    # choice-only bias, group-limited choice (`n_group` groups, the best `topk_group` of them), a weight scale.
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False  # Qwen2-MoE: the shared expert's output times sigmoid(a linear of the input)
    scoring_func: str = "softmax"
    score_correction_bias: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    # Multi-head latent attention (DeepSeek, engine/model/mla.py; 0: none). `head_dim` is then the rotary part of
    # each query/key head (`qk_rope_head_dim`), and the cache holds one latent of kv_lora_rank + head_dim a token.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0  # 0: one q_proj (V2-Lite)
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = False
    # Sliding-window attention: the listed layers' queries see their last `sliding_window` tokens.
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] = ()
    # Gemma 3 (engine/model/families.py): RMSNorm by (1 + weight), scaled embeddings, norms on the attention
    # and MLP outputs too, a softmax scale of its own, sliding layers on plain RoPE of base `local_rope_theta`.
    hidden_act: str = "silu"
    norm_unit_offset: bool = False
    embed_scale: float = 1.0
    sandwich_norms: bool = False
    attention_scale: float | None = None  # None: head_dim ** -0.5
    local_rope_theta: float | None = None
    final_logit_softcapping: float | None = None
    # Gemma 2 (engine/model/gemma2.py) caps attention scores; OLMo 2 (engine/model/olmo2.py) norms only after each
    # block and its q/k over the whole projection rather than per head.
    attn_logit_softcapping: float | None = None
    pre_norms: bool = True
    qk_norm_whole: bool = False
    nope_layers: tuple[int, ...] = ()  # SmolLM3 (engine/model/smollm3.py): layers attending without RoPE
    # Cohere2 (engine/model/cohere2.py): mean-centred norms, attention and MLP side by side on one norm, scaled logits.
    layer_norm: bool = False
    parallel_block: bool = False
    logit_scale: float = 1.0
    partial_rotary_factor: float = 1.0  # Phi-4-mini: RoPE on the first 3/4 of each head
    # Qwen2.5-VL's M-RoPE: the rotary frequencies split into (temporal, height, width) sections, each turned by
    # its own row of a token's 3 position ids (engine/model/rope.py, engine/mrope_positions.py).
    mrope_section: tuple[int, ...] | None = None
    mrope_interleaved: bool = False  # Qwen3-VL's layout of those sections (engine/model/qwen3_vl.py)
    hybrid: HybridSpec | None = None  # a Mamba-2 hybrid's mixer layers and geometry (engine/model/mamba_config.py)
    attention_chunk: int | None = None  # Llama 4: sliding layers attend within aligned chunks of this many tokens
    llama4: Llama4Spec | None = None  # its q/k L2 norm and NoPE query temperature (engine/model/llama4_config.py)
    torch_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for rotary embeddings")
        if self.sparse_layers and not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError("num_experts_per_tok must be between 1 and num_experts")
        if self.sliding_layers and not (self.sliding_window or 0) > 0:
            raise ValueError("sliding_window must be a positive number of tokens")

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    def long_rope_offset(self, num_prompt_tokens: int) -> int:
        """What a sequence adds to its positions to index the RotaryEmbedding table (engine/model/rope.py):
        under LongRoPE, a prompt longer than the original context reads the second, all-long table."""
        if self.rope_type != "longrope" or num_prompt_tokens <= (self.rope_scaling or {})["original_max_position_embeddings"]:
            return 0
        return self.max_position_embeddings

    @property
    def mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_kv_layers(self) -> int:
        """Layers that keep KV: all but a Mamba-2 hybrid's mixer layers (engine/model/mamba_config.py)."""
        return self.num_layers - (self.hybrid.layers_without_kv if self.hybrid else 0)

    @property
    def kv_cache_entry(self) -> tuple[int, int, int]:
        """(planes, heads, values) the KV cache holds a token a layer: K and V planes of kv-heads x head_dim,
        or MLA's one plane of one latent (engine/model/mla.py)."""
        if self.mla:
            return 1, 1, self.kv_lora_rank + self.head_dim
        return 2, self.num_kv_heads, self.head_dim

    @property
    def rotary_dim(self) -> int:
        """The leading dims of each head that RoPE turns (the rest pass through)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        raw = with_defaults(families.text_config_of(raw))
        model_type = raw.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}")
        overrides: dict = {}  # an added family's fields over what the generic parse makes of it
        if model_type in ADDED_FAMILIES:
            raw, overrides = ADDED_FAMILIES[model_type](raw)
        hidden_act = families.activation(model_type, raw)
        num_heads = raw["num_attention_heads"]
        hidden_size = raw["hidden_size"]
        head_dim = raw.get("head_dim") or hidden_size // num_heads
        extra: dict = {}
        if model_type == GEMMA3:
            rope_raw, extra["local_rope_theta"] = families.gemma3_rope(raw)
            extra |= families.gemma3_fields(raw)
            raw = {**raw, **rope_raw, "rope_scaling": None}
        if model_type == GPT_OSS:
            extra |= gpt_oss_fields(raw)
        if model_type in DEEPSEEK_TYPES:
            extra |= deepseek_fields(raw)
            head_dim = extra.pop("head_dim")
            raw = {**raw, "num_key_value_heads": num_heads}
        if model_type in HYBRID_TYPES:
            raw, hybrid = hybrid_fields(model_type, raw)
            extra |= hybrid
        partial = families.partial_rotary_factor(raw)
        rope_theta, rope_scaling = _parse_rope(raw, int(head_dim * partial))
        attention_bias = bool(raw.get("attention_bias", False))
        eos = raw.get("eos_token_id")
        config = cls(
            model_type=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=hidden_size,
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            intermediate_size=raw["intermediate_size"],
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type == GEMMA3)),
            # Qwen2 always has q/k/v biases and no o_proj bias; Llama's `attention_bias` covers all four.
            **({} if model_type in DEEPSEEK_TYPES else {"qkv_bias": _qkv_bias(model_type, raw, attention_bias),
                                                       "o_bias": model_type != "qwen2" and attention_bias}),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=model_type in QK_NORM_MODEL_TYPES,
            hidden_act=hidden_act,
            partial_rotary_factor=partial,
            mrope_section=tuple(raw["mrope_section"]) if raw.get("mrope_section") else None,
            mrope_interleaved=bool(raw.get("mrope_interleaved", False)),
            **extra,
            **({} if model_type in DEEPSEEK_TYPES else expert_fields(model_type, raw)),
            **_sliding_fields(model_type, raw),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32").removeprefix("torch."),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_as_id_tuple(eos),
        )
        return replace(config, **overrides) if overrides else config

    def num_params(self) -> int:
        """Parameter count, counting tied embeddings once."""
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        attn = self.hidden_size * (q_size + 2 * kv_size) + q_size * self.hidden_size
        attn += (q_size + 2 * kv_size) * self.qkv_bias + self.hidden_size * self.o_bias
        qk_norm_width = q_size + kv_size if self.qk_norm_whole else 2 * self.head_dim
        attn += qk_norm_width * self.qk_norm + self.num_heads * self.attention_sinks
        if self.mla:
            attn = self.mla_params()
        norms = ((4 if self.sandwich_norms else 2) - (0 if self.pre_norms else 2) - self.parallel_block) * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        mlp += (2 * self.intermediate_size + self.hidden_size) * self.mlp_bias
        # A sparse layer's MLP: the router plus every expert's gate, up and down projections.
        sparse_mlp = self.num_experts * self.hidden_size * (1 + 3 * self.moe_intermediate_size)
        sparse_mlp += self.num_experts * (1 + 2 * self.moe_intermediate_size + self.hidden_size) * self.moe_bias
        sparse_mlp += 3 * self.hidden_size * self.shared_expert_intermediate_size
        sparse_mlp += self.hidden_size * self.shared_expert_gate
        num_sparse = len(self.sparse_layers)
        mlps = (self.num_layers - num_sparse) * mlp + num_sparse * sparse_mlp
        per_layer = attn + norms
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + mlps + embeddings + self.hidden_size

    def mla_params(self) -> int:
        """One MLA layer's projection and norm weights (engine/model/mla.py)."""
        qk_head = self.qk_nope_head_dim + self.head_dim
        rank, heads = self.kv_lora_rank, self.num_heads
        if self.q_lora_rank:
            q = self.hidden_size * self.q_lora_rank + self.q_lora_rank * (1 + heads * qk_head)
            q += self.q_lora_rank * self.qkv_bias
        else:
            q = self.hidden_size * heads * qk_head
        kv = self.hidden_size * (rank + self.head_dim) + rank + rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        kv += (rank + self.head_dim) * self.qkv_bias
        return q + kv + heads * self.v_head_dim * self.hidden_size + self.hidden_size * self.o_bias

    def is_sparse(self, layer: int) -> bool:
        return layer in self.sparse_layers


def sliding_layer_count(model_type: str, raw: dict) -> tuple[int, int]:
    """(the sliding window, how many layers slide over it); (0, 0) where none does."""
    fields = _sliding_fields(model_type, with_defaults(raw))
    return int(fields.get("sliding_window") or 0), len(fields.get("sliding_layers", ()))


def _sliding_fields(model_type: str, raw: dict) -> dict:
    """Mistral, Mixtral and Phi-3 slide in every layer when `sliding_window` is set; Gemma 3 in its sliding
    layers (engine/model/families.py); Qwen only with
    `use_sliding_window`, in the layers `layer_types` names (by default those from
    `max_window_layers` on), as transformers reads them."""
    num_layers = raw["num_hidden_layers"]
    window = raw.get("sliding_window", 4096 if model_type == GEMMA3 else None)  # transformers' Gemma 3 default
    if model_type in SLIDING_FLAG_MODEL_TYPES and not raw.get("use_sliding_window"):
        window = None
    if model_type == PHI3 and window is not None and window >= raw.get("max_position_embeddings", 2048):
        window = None  # Phi-3.5 and Phi-4-mini set 262,144: wider than any context, so no window
    if window is None or model_type not in (*SLIDING_FLAG_MODEL_TYPES, "mistral", "mixtral", PHI3, GEMMA3, GPT_OSS):
        return {}
    layer_types = families.gemma3_layer_types(raw) if model_type == GEMMA3 else raw.get("layer_types")
    if model_type in SLIDING_FLAG_MODEL_TYPES and layer_types is None:
        start = raw.get("max_window_layers", 28)
        layer_types = ["sliding_attention" if i >= start else "full_attention" for i in range(num_layers)]
    if layer_types is None:
        return {"sliding_window": int(window), "sliding_layers": tuple(range(num_layers))}
    unknown = set(layer_types) - set(LAYER_TYPES)
    if len(layer_types) != num_layers or unknown:
        raise ValueError(f"layer_types must name {num_layers} layers, each one of {LAYER_TYPES}")
    sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention")
    return {"sliding_window": int(window), "sliding_layers": sliding} if sliding else {}


def expert_fields(model_type: str, raw: dict) -> dict:
    """The mixture-of-experts fields: Mixtral's experts are as wide as its `intermediate_size` and
    every layer is sparse; Qwen3-MoE keeps `mlp_only_layers` dense and makes every
    `decoder_sparse_step`-th layer sparse. Hub configs name the count `num_experts` (Qwen) or
    `num_local_experts` (Mixtral, and transformers 5 for both). Qwen2-MoE is Qwen3-MoE's layout plus a shared
    expert behind a sigmoid gate. gpt-oss's: engine/model/gpt_oss.py."""
    if model_type == GPT_OSS:
        return gpt_oss_experts(with_defaults(raw))
    num_experts = int(raw.get("num_experts") or raw.get("num_local_experts") or 0)
    if model_type == "mixtral":
        return {"num_experts": num_experts, "num_experts_per_tok": raw.get("num_experts_per_tok", 2),
                "moe_intermediate_size": raw["intermediate_size"], "norm_topk_prob": True,
                "sparse_layers": tuple(range(raw["num_hidden_layers"]))}
    if model_type not in ("qwen3_moe", "qwen2_moe") or not num_experts:
        return {}
    dense = set(raw.get("mlp_only_layers") or ())
    step = raw.get("decoder_sparse_step", 1)
    sparse = tuple(i for i in range(raw["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0)
    return {"num_experts": num_experts, "num_experts_per_tok": raw["num_experts_per_tok"],
            "moe_intermediate_size": raw["moe_intermediate_size"],
            "norm_topk_prob": bool(raw.get("norm_topk_prob", False)), "sparse_layers": sparse,
            **({"shared_expert_intermediate_size": int(raw.get("shared_expert_intermediate_size") or 0),
                "shared_expert_gate": True} if model_type == "qwen2_moe" else {})}


def _qkv_bias(model_type: str, raw: dict, attention_bias: bool) -> bool:
    """Qwen2 always has q/k/v biases, Qwen2-MoE unless its `qkv_bias` says not; Llama's `attention_bias`."""
    if model_type == "qwen2_moe":
        return bool(raw.get("qkv_bias", True))
    return model_type == "qwen2" or attention_bias


def _parse_rope(raw: dict, rotary_dim: int) -> tuple[float, dict | None]:
    # transformers 5 writes `rope_parameters` (holding rope_theta); older configs have top-level keys.
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    params.pop("partial_rotary_factor", None)  # read by families.partial_rotary_factor
    rope_theta = float(params.pop("rope_theta", None) or raw.get("rope_theta") or 10000.0)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r}; expected one of {SUPPORTED_ROPE_TYPES}")
    if rope_type == "default":
        return rope_theta, None
    if rope_type == "longrope":
        params = families.longrope_parameters(raw, params, rotary_dim)
    if rope_type == "llama3":
        params.setdefault("original_max_position_embeddings", raw.get("max_position_embeddings", 8192))
    if rope_type == "yarn":
        params.setdefault("original_max_position_embeddings", raw.get("max_position_embeddings", 2048))
        if params.get("factor") is None:  # DeepSeek-V3's way: the context's growth over the original
            params["factor"] = raw["max_position_embeddings"] / params["original_max_position_embeddings"]
    return rope_theta, {"rope_type": rope_type, **params}


def _as_id_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, int) else tuple(value)
