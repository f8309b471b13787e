"""`pitstop engine quantize`: writes a W8A8 copy of a full-precision model folder in llm-compressor's
compressed-tensors layout (`int-quantized` or `float-quantized`, weights per channel, activations
dynamic per token), which the engine (and vLLM) load without `--quantization`. Round-to-nearest needs
no calibration data: the per-token activation scales are taken at run time. The engine then loads one
byte a projection weight instead of reading and quantizing the full-precision checkpoint at start.

Quantized: the attention and dense MLP projections (what engine/model/quant_linear.py serves);
embeddings, the LM head, MoE routers and experts are copied as they are."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import QUANTIZATIONS
from engine.model.loader import safetensors_files
from engine.model.quant_config import QuantScheme
from engine.model.quant_linear import quantize_rows

_PROJECTION = re.compile(r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight")


def quantization_config(method: str) -> dict:
    """The `quantization_config` of config.json for a `method` ("int8" / "fp8") checkpoint."""
    kind = "int" if method == "int8" else "float"
    return {
        "quant_method": "compressed-tensors", "format": f"{kind}-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": kind, "symmetric": True, "strategy": "channel", "dynamic": False},
            "input_activations": {"num_bits": 8, "type": kind, "symmetric": True, "strategy": "token",
                                  "dynamic": True},
        }},
        "ignore": ["lm_head"],
    }


def quantize_checkpoint(model_dir: str | Path, out_dir: str | Path, method: str) -> Path:
    """Writes `out_dir`: `model_dir`'s files with its projections in `method` and their scales."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"quantization {method!r} is not one of {', '.join(QUANTIZATIONS)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("quantization_config"):
        raise ValueError(f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method')})")
    scheme = QuantScheme(method)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():  # tokenizer, chat template, generation config
        if path.is_file() and path.suffix != ".safetensors" and path.name not in ("config.json",
                                                                                 "model.safetensors.index.json"):
            shutil.copy2(path, out_dir / path.name)
    weight_map: dict[str, str] = {}
    for path in safetensors_files(model_dir):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = f.get_tensor(name)
                if _PROJECTION.fullmatch(name):
                    quantized, scale = quantize_rows(tensor, scheme)
                    tensors[name] = quantized
                    tensors[name.removesuffix("weight") + "weight_scale"] = scale[:, None].contiguous()
                else:
                    tensors[name] = tensor
        save_file(tensors, out_dir / path.name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, path.name))
    if (model_dir / "model.safetensors.index.json").exists():
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config["quantization_config"] = quantization_config(method)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir
