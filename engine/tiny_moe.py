"""Tiny random DeepSeek-V2/V3 and Qwen2-MoE models saved by transformers' own classes (DeepseekV2ForCausalLM,
DeepseekV3ForCausalLM, Qwen2MoeForCausalLM), as `pitstop engine make-tiny-model --family deepseek_v2 |
deepseek_v3 | qwen2_moe` writes them (Llama 4's: engine/tiny_llama4.py) and the engine's tests compare against (tests/engine/deepseek_checkpoints.py,
tests/engine/test_qwen2_moe.py): each with what sets its kind apart, weights spread so greedy choices are
clear-cut. A folder the CLI writes also holds the engine's tiny byte-level BPE tokenizer (engine/tiny_model.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is built: the CLI reads TINY_MOE_FAMILIES at its start
    import torch

# Latent 16 + rotary 8 = 24 values a token a layer, against 2 x 4 heads x (8 + 8) keys and 4 x 12 values expanded.
MLA = {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
       "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256, "kv_lora_rank": 16,
       "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12, "moe_intermediate_size": 16,
       "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2, "first_k_dense_replace": 1,
       "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # fmt: skip
# YaRN x4 over 64 positions with DeepSeek's two mscales (the softmax scale takes mscale_all_dim's square).
YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}
DEEPSEEK_KINDS = ("v2_lite", "v2_grouped", "v3")
_KIND_FIELDS = {
    "v2_lite": {"q_lora_rank": None, "topk_method": "greedy"},
    "v2_grouped": {"q_lora_rank": 24, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
                   "routed_scaling_factor": 2.0, "rope_parameters": YARN},
    "v3": {"q_lora_rank": 24, "n_group": 4, "topk_group": 2, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
           "rope_interleave": True, "rope_parameters": YARN},
}  # fmt: skip
QWEN2_MOE = {"vocab_size": 300, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
             "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 256, "num_experts": 8,
             "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
             "mlp_only_layers": [1]}  # fmt: skip
# `--family` -> what make_tiny_moe_model builds: DeepSeek-V2 as V2-Lite is laid out (the one small enough to
# run at home), V3 with everything V3 adds.
TINY_MOE_FAMILIES = {"deepseek_v2": "v2_lite", "deepseek_v3": "v3", "qwen2_moe": "qwen2_moe", "llama4": "llama4"}


def spread_weights(model: torch.nn.Module, gain: float = 1.0, embed_std: float = 1.0) -> torch.nn.Module:
    """Weights drawn so every layer moves the residual stream, logits spread by a few units and routers choose
    decisively: greedy tokens then depend on context and rarely meet near-ties (transformers' std-0.02 init
    makes near-uniform logits)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.3)
            elif "embed" in name:
                param.normal_(0.0, embed_std)
            else:
                qk = 2.0 if "q_proj" in name or "k_proj" in name or "qkv_proj" in name else 1.0
                router = 4.0 if name.endswith("gate.weight") else 1.0  # decisive expert choices
                param.normal_(0.0, gain * qk * router / param.shape[-1] ** 0.5)
    return model.eval()


def hf_deepseek(kind: str, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """v2_lite: V2-Lite's layout (one q_proj, softmax top-k greedy); v2_grouped: a q LoRA, group-limited greedy
    routing over 4 groups (best 2), weights x2, YaRN; v3: sigmoid scores with a correction bias, noaux_tc groups,
    renormalised weights x2.5, interleaved RoPE under YaRN."""
    import torch
    import transformers as hf

    torch.manual_seed(seed)
    if kind not in DEEPSEEK_KINDS:
        raise ValueError(f"kind must be one of {DEEPSEEK_KINDS}, not {kind!r}")
    config = {**MLA, **_KIND_FIELDS[kind], **overrides}
    if kind == "v3":
        model = hf.DeepseekV3ForCausalLM(hf.DeepseekV3Config(**config))
    else:
        model = hf.DeepseekV2ForCausalLM(hf.DeepseekV2Config(**config))
    model = spread_weights(model)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # large enough to change choices
                buffer.normal_(0.0, 0.3)
    return model


def hf_qwen2_moe(seed: int = 0, **overrides: object) -> torch.nn.Module:
    """Layer 1 of 3 dense (`mlp_only_layers`), 8 experts (top 2, raw softmax weights), a shared expert twice an
    expert's width; the shared gate spread so its sigmoid is far from one half."""
    import torch
    import transformers as hf

    torch.manual_seed(seed)
    config = {**QWEN2_MOE, **overrides}
    config["mlp_only_layers"] = [layer for layer in config["mlp_only_layers"] if layer < config["num_hidden_layers"]]
    model = spread_weights(hf.Qwen2MoeForCausalLM(hf.Qwen2MoeConfig(**config)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("shared_expert_gate.weight"):
                param.normal_(0.0, 2.0 / param.shape[-1] ** 0.5)
    return model


def make_tiny_moe_model(out_dir: str | Path, family: str, layers: int = 3, hidden: int = 48, heads: int = 4,
                        kv_heads: int | None = None, vocab_size: int = 512, seed: int = 0, experts: int = 8,
                        experts_per_token: int = 2) -> Path:
    """A model folder of `family` (TINY_MOE_FAMILIES) the engine serves, with the tiny tokenizer and chat template;
    ValueError for a family or sizes transformers refuses."""
    from engine.tiny_model import write_tokenizer

    if family not in TINY_MOE_FAMILIES:
        raise ValueError(f"family must be one of {tuple(TINY_MOE_FAMILIES)}, not {family!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, vocab_size, 256)
    sizes = {"vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": 2 * hidden,
             "num_hidden_layers": layers, "num_attention_heads": heads, "num_experts_per_tok": experts_per_token,
             "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    if family == "llama4":  # engine/tiny_llama4.py's layout; a NoPE layer every 4th (or the last of fewer)
        from engine.tiny_llama4 import hf_llama4

        model = hf_llama4(seed, **{**sizes, "intermediate_size": hidden}, intermediate_size_mlp=2 * hidden,
                          head_dim=hidden // heads,
                          num_local_experts=experts, num_key_value_heads=kv_heads or max(1, heads // 2),
                          no_rope_layer_interval=min(4, layers))
    elif family == "qwen2_moe":
        model = hf_qwen2_moe(seed, **sizes, num_experts=experts, num_key_value_heads=kv_heads or max(1, heads // 2))
    else:
        groups = next(g for g in (4, 2, 1) if experts % g == 0 and experts // g >= 2 or g == 1)  # V3 sums 2 a group
        model = hf_deepseek(TINY_MOE_FAMILIES[family], seed, **sizes, num_key_value_heads=heads,
                            n_routed_experts=experts, n_group=groups, topk_group=max(1, groups // 2))
    model.save_pretrained(out)
    return out
