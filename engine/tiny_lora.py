"""make_tiny_lora: a random LoRA adapter for a model folder, in PEFT's format (adapter_config.json,
adapter_model.safetensors), for tests and benchmarks of multi-LoRA serving (engine/model/lora.py).
Both factors are random (PEFT starts B at zero, which would make the adapter a no-op)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model.config import ModelConfig
from engine.model.lora import projection_shape

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_tiny_lora(model_dir: str | Path, out_dir: str | Path, rank: int = 8, alpha: float = 16.0,
                   targets: tuple[str, ...] = DEFAULT_TARGETS, seed: int = 0, std: float = 0.05) -> Path:
    config = ModelConfig.from_dir(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_layers):
        for projection in targets:
            block = "self_attn" if projection in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            if block == "mlp" and config.is_sparse(layer):
                continue
            in_size, out_size = projection_shape(config, projection)
            prefix = f"base_model.model.model.layers.{layer}.{block}.{projection}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_size, generator=gen) * std
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_size, rank, generator=gen) * std
    save_file(tensors, out / "adapter_model.safetensors")
    settings = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
                "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
                "base_model_name_or_path": str(model_dir), "task_type": "CAUSAL_LM"}
    (out / "adapter_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out
