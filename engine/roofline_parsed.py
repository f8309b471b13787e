"""ModelShape's fields (engine/roofline.py) for the families whose shape the roofline takes from the engine's own
parse of their config: DeepSeek-V2/V3, whose multi-head latent attention (engine/model/mla.py) caches one latent a
token a layer and whose projections are not q/k/v/o of head_dim, and the shared experts of DeepSeek and Qwen2-MoE,
which every token of a sparse layer runs; and the families read by a module of their own
(engine/model/added_families.py: Gemma 2's sliding layers, GLM-4.5's dense first layers and shared experts). An MLA shape's `head_dim` is a query/key head's (no-RoPE + RoPE dims),
what the attention FLOPs of a query-key pair are priced on."""

from __future__ import annotations

from engine.model.added_families import ADDED_FAMILIES
from engine.model.config import ModelConfig
from engine.model.deepseek import DEEPSEEK_TYPES

PARSED_TYPES = (*DEEPSEEK_TYPES, "qwen2_moe", *ADDED_FAMILIES)


def parsed_shape_fields(c: ModelConfig, name: str | None) -> dict:
    mla = {"kv_values_per_layer": c.kv_lora_rank + c.head_dim, "attention_params_per_layer": c.mla_params(),
           "head_dim": c.qk_nope_head_dim + c.head_dim} if c.mla else {"head_dim": c.head_dim}
    # The sliding layers read their window, the others the whole context (ModelShape.hybrid_attention).
    sliding = {"sliding_window": c.sliding_window or 0,
               "num_full_layers": c.num_layers - len(c.sliding_layers)} if c.sliding_layers else {}
    return {"name": name or c.model_type, "num_layers": c.num_layers, "hidden_size": c.hidden_size,
            "num_heads": c.num_heads, "num_kv_heads": c.num_kv_heads, "intermediate_size": c.intermediate_size,
            "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_word_embeddings, "num_experts": c.num_experts,
            "experts_per_token": c.num_experts_per_tok, "expert_intermediate_size": c.moe_intermediate_size,
            "num_sparse_layers": len(c.sparse_layers),
            "shared_expert_intermediate_size": c.shared_expert_intermediate_size, **mla, **sliding}
