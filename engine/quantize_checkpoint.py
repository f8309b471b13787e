"""`pitstop engine quantize`: writes a quantized copy of a full-precision model folder in llm-compressor's
compressed-tensors layout, which the engine (and vLLM) load without `--quantization`: W8A8
(`int-quantized` or `float-quantized`, weights per channel, activations dynamic per token) or W4A16
(`pack-quantized`, 4-bit weights in groups of `group_size` columns with zero points, as
engine/model/int4_formats.py packs them; activations in the model's dtype). Round-to-nearest needs no
calibration data (the per-token activation scales are taken at run time); it is the same rounding as
`--quantization` at load, so the checkpoint serves exactly as the flag does. The engine then loads one
byte (or half a byte) a projection weight instead of reading and quantizing the full checkpoint at start.

Quantized: the attention and dense MLP projections (what engine/model/quant_linear.py serves);
embeddings, the LM head, MoE routers and experts are copied as they are (and named in `ignore`), and so are a
vision model's tower and projector (LLaVA, Gemma 3, Qwen2.5-VL): the written folder takes images as the flag's
runner does. Phi-3's fused `qkv_proj` and `gate_up_proj` are written as their parts (q/k/v, gate/up), each
quantized."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import QUANTIZATIONS
from engine.model.config import ModelConfig
from engine.model.families import QWEN2_5_VL
from engine.model.int4_formats import pack_compressed_tensors, quantize_groups
from engine.model.loader import safetensors_files, split_fused
from engine.model.quant_config import RUNTIME_INT4_GROUP_SIZE, QuantizationError, QuantScheme, runtime_scheme
from engine.model.quant_linear import quantize_rows
from engine.model.qwen3_vl_config import QWEN3_VL, QWEN3_VL_MOE
from engine.model.vision import VisionConfig

# A multimodal Gemma 3's language model is under `language_model.` (the Hub's layout) or `model.language_model.`.
_PROJECTION = re.compile(r"(language_model\.)?model\.(language_model\.)?layers\.\d+\."
                         r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight")
# A vision model's tower and projector are copied as they are (served in the model's dtype: engine/model/vision.py)
# and named in `ignore`, so vLLM too reads them unquantized.
_VISION_MODULES = {QWEN2_5_VL: ["re:.*visual.*"], QWEN3_VL: ["re:.*visual.*"], QWEN3_VL_MOE: ["re:.*visual.*"]}
_TOWER_AND_PROJECTOR = ["re:.*vision_tower.*", "re:.*multi_modal_projector.*"]  # LLaVA's and Gemma 3's
# What vLLM would otherwise take for quantized Linear layers of a mixture-of-experts model.
_MOE_IGNORE = ["re:.*\\.(mlp|block_sparse_moe)\\.experts\\..*", "re:.*\\.(mlp|block_sparse_moe)\\.gate$"]
_EXPERT_TENSOR = re.compile(r".*\.(mlp|block_sparse_moe)\.experts\..*")


def quantization_config(method: str, group_size: int = RUNTIME_INT4_GROUP_SIZE) -> dict:
    """The `quantization_config` of config.json for a `method` ("int8" / "fp8" / "int4") checkpoint."""
    if method == "int4":
        return {
            "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {
                "targets": ["Linear"], "input_activations": None, "output_activations": None,
                "weights": {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                            "group_size": group_size, "dynamic": False, "actorder": None, "observer": "minmax"},
            }},
            "ignore": ["lm_head"],
        }
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


def quantize_checkpoint(model_dir: str | Path, out_dir: str | Path, method: str,
                        group_size: int | None = None) -> Path:
    """Writes `out_dir`: `model_dir`'s files with its projections in `method` and their scales (int4:
    in groups of `group_size` input columns, 128 by default; zero points too)."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"quantization {method!r} is not one of {', '.join(QUANTIZATIONS)}")
    if group_size is not None and method != "int4":
        raise ValueError(f"--group-size applies to int4, not {method} (one scale a row)")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("quantization_config"):
        raise ValueError(f"{model_dir} is already quantized ({config['quantization_config'].get('quant_method')})")
    scheme = runtime_scheme(method)
    if group_size is not None:
        scheme = QuantScheme("int4", group_size=group_size, symmetric=scheme.symmetric)
    experts = False
    model_config = ModelConfig.from_dict(config)
    vision = VisionConfig.from_dict(config)  # a tower the engine cannot serve is refused here, before any writing
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():  # tokenizer, chat template, generation config
        if path.is_file() and path.suffix != ".safetensors" and path.name not in ("config.json",
                                                                                 "model.safetensors.index.json"):
            shutil.copy2(path, out_dir / path.name)
    weight_map: dict[str, str] = {}
    for path in safetensors_files(model_dir):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for stored in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                experts = experts or bool(_EXPERT_TENSOR.fullmatch(stored))
                for name, tensor in split_fused(stored, f.get_tensor(stored), model_config):
                    tensors.update(_quantized(name, tensor.contiguous(), scheme))
        save_file(tensors, out_dir / path.name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, path.name))
    if (model_dir / "model.safetensors.index.json").exists():
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config["quantization_config"] = quantization_config(method, scheme.group_size or RUNTIME_INT4_GROUP_SIZE)
    if experts:
        config["quantization_config"]["ignore"] += _MOE_IGNORE
    if vision is not None:
        config["quantization_config"]["ignore"] += _VISION_MODULES.get(vision.family, _TOWER_AND_PROJECTOR)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _quantized(name: str, tensor: torch.Tensor, scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """A checkpoint tensor as the quantized checkpoint stores it: a projection's weight quantized, with
    its scales; anything else as it is."""
    if not _PROJECTION.fullmatch(name):
        return {name: tensor}
    if scheme.method == "int4":
        module = name.removesuffix(".weight")
        return {f"{module}.{leaf}": value for leaf, value in _int4_tensors(module, tensor, scheme).items()}
    quantized, scale = quantize_rows(tensor, scheme)
    return {name: quantized, name.removesuffix("weight") + "weight_scale": scale[:, None].contiguous()}


def _int4_tensors(module: str, weight: torch.Tensor, scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """One projection's pack-quantized tensors, rounded as `--quantization int4` rounds at load."""
    group_size = scheme.group_size or RUNTIME_INT4_GROUP_SIZE
    if weight.shape[1] % group_size:
        raise QuantizationError(f"{module}'s {weight.shape[1]} input columns are not whole groups of {group_size}: "
                                "choose a --group-size that divides them")
    values, scales, zeros = quantize_groups(weight, group_size, scheme.symmetric)
    return pack_compressed_tensors(values, scales, None if scheme.symmetric else zeros, weight.dtype)
