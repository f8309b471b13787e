"""4-bit checkpoints for the engine's tests, packed here from each format's published layout (not with
the engine's code): llm-compressor's compressed-tensors `pack-quantized`, AutoAWQ's `gemm` and GPTQ's
v1 / v2. Each comes with a float twin, the same folder whose projections hold the exact dequantized
weights, so a test can check the engine reads the 4-bit one as that float model.

The layouts, as their packers write them (see engine/model/int4_formats.py for the sources):
- compressed-tensors: value (signed int4) + 8 in nibble i of an int32 for input column 8c + i;
  zero points the same along the output rows; weight = (q_signed - zero_signed) x scale.
- AWQ gemm: qweight [in, out/8], nibble i holds output column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i];
  qzeros likewise; weight = (q - zero) x scale.
- GPTQ: qweight [in/8, out], nibble j holds input row 8r + j; qzeros [groups, out/8] in order, v1
  storing zero - 1; g_idx gives each input column's group."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

AWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class Quantized:
    """One projection rounded to 4 bits: q [out, in] 0..15, scales and zeros [out, groups], and each
    input column's group."""

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor

    def dequantized(self) -> torch.Tensor:
        columns = self.g_idx.long()
        return (self.q.float() - self.zeros.float()[:, columns]) * self.scales.float()[:, columns]


def round_to_4_bits(weight: torch.Tensor, group: int | None, symmetric: bool, scale_dtype: torch.dtype,
                    g_idx: torch.Tensor | None = None) -> Quantized:
    """A plain min/max rounding, group by group (columns picked by `g_idx`, in order by default)."""
    out, columns = weight.shape
    group = group or columns
    g_idx = torch.arange(columns, dtype=torch.int32) // group if g_idx is None else g_idx
    groups = columns // group
    q = torch.zeros(out, columns, dtype=torch.uint8)
    scales, zeros = torch.zeros(out, groups), torch.zeros(out, groups, dtype=torch.uint8)
    for g in range(groups):
        picked = (g_idx == g).nonzero()[:, 0]
        w = weight[:, picked].float()
        if symmetric:
            scale, zero = w.abs().amax(dim=1) / 7, torch.full((out,), 8.0)
        else:
            low, high = w.amin(dim=1), w.amax(dim=1)
            scale = (high - low) / 15
            zero = (-low / scale).round().clamp(1, 15)  # 1 at least: GPTQ v1 stores zero - 1 in 4 bits
        scale = scale.to(scale_dtype).float()
        q[:, picked] = ((w / scale[:, None]).round() + zero[:, None]).clamp(0, 15).to(torch.uint8)
        scales[:, g], zeros[:, g] = scale, zero.to(torch.uint8)
    return Quantized(q, scales.to(scale_dtype), zeros, g_idx)


def pack_rows(values: torch.Tensor, order: list[int] | None = None) -> torch.Tensor:
    """int32 [rows, cols / 8]: nibble i of each int32 holds column 8c + order[i] (in order by default)."""
    order = order or list(range(8))
    array = values.numpy().astype(np.uint64)
    packed = np.zeros((array.shape[0], array.shape[1] // 8), dtype=np.uint64)
    for c in range(packed.shape[1]):
        for i in range(8):
            packed[:, c] |= array[:, 8 * c + order[i]] << np.uint64(4 * i)
    return torch.from_numpy(packed.astype(np.uint32).view(np.int32))


def compressed_tensors_tensors(quantized: Quantized, symmetric: bool, actorder: bool) -> dict[str, torch.Tensor]:
    signed = quantized.q.to(torch.int16) - 8
    tensors = {"weight_packed": pack_rows((signed + 8).to(torch.uint8)), "weight_scale": quantized.scales,
               "weight_shape": torch.tensor(list(quantized.q.shape), dtype=torch.int64)}
    if not symmetric:
        zero_signed = quantized.zeros.to(torch.int16) - 8
        tensors["weight_zero_point"] = pack_rows((zero_signed + 8).to(torch.uint8).T.contiguous()).T.contiguous()
    if actorder:
        tensors["weight_g_idx"] = quantized.g_idx
    return tensors


def awq_tensors(quantized: Quantized) -> dict[str, torch.Tensor]:
    return {"qweight": pack_rows(quantized.q.T.contiguous(), AWQ_ORDER_MAP),
            "qzeros": pack_rows(quantized.zeros.T.contiguous(), AWQ_ORDER_MAP),
            "scales": quantized.scales.T.contiguous()}


def gptq_tensors(quantized: Quantized, v1: bool) -> dict[str, torch.Tensor]:
    stored_zeros = quantized.zeros - 1 if v1 else quantized.zeros
    return {"qweight": pack_rows(quantized.q).T.contiguous(),  # eight input rows an int32
            "qzeros": pack_rows(stored_zeros.T.contiguous()), "scales": quantized.scales.T.contiguous(),
            "g_idx": quantized.g_idx}


def write_int4_checkpoint(model_dir: Path, out: Path, fmt: str, group: int | None = 64, symmetric: bool = False,
                          act_order: bool = False, v1: bool = True, seed: int = 0) -> tuple[Path, Path]:
    """(the 4-bit folder, its float twin) from full-precision `model_dir`, in format `fmt`
    ("compressed-tensors", "awq" or "gptq"); act order shuffles which columns share a group."""
    generator = torch.Generator().manual_seed(seed)
    float_dir = out.with_name(out.name + "-float")
    for folder in (out, float_dir):
        shutil.copytree(model_dir, folder)
    tensors = load_file(model_dir / "model.safetensors")
    packed, dequantized = dict(tensors), dict(tensors)
    scale_dtype = torch.float16 if fmt in ("awq", "gptq") else torch.bfloat16
    orders: dict[str, torch.Tensor] = {}  # GPTQ orders columns by the input's statistics: q/k/v share one order
    for name in [n for n in tensors if n.endswith("_proj.weight") and ".experts." not in n]:
        weight, module = tensors[name], name.removesuffix(".weight")
        g_idx = None
        if act_order:
            same_input = module.replace("q_proj", "qkv").replace("k_proj", "qkv").replace("v_proj", "qkv")
            same_input = same_input.replace("gate_proj", "gate_up").replace("up_proj", "gate_up")
            order = orders.setdefault(same_input, torch.randperm(weight.shape[1], generator=generator))
            g_idx = torch.empty(weight.shape[1], dtype=torch.int32)
            g_idx[order] = (torch.arange(weight.shape[1]) // group).to(torch.int32)
        quantized = round_to_4_bits(weight, group, symmetric, scale_dtype, g_idx)
        dequantized[name] = quantized.dequantized()
        del packed[name]
        if fmt == "compressed-tensors":
            leaves = compressed_tensors_tensors(quantized, symmetric, act_order)
        elif fmt == "awq":
            leaves = awq_tensors(quantized)
        else:
            leaves = gptq_tensors(quantized, v1)
        packed.update({f"{module}.{leaf}": value for leaf, value in leaves.items()})
    save_file(packed, out / "model.safetensors")
    save_file(dequantized, float_dir / "model.safetensors")
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config(fmt, group, symmetric, act_order, v1)
    (out / "config.json").write_text(json.dumps(config))
    return out, float_dir


def quantization_config(fmt: str, group: int | None, symmetric: bool, act_order: bool, v1: bool) -> dict:
    if fmt == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group or -1, "zero_point": True, "version": "gemm"}
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": group or -1, "desc_act": act_order, "sym": symmetric,
                "checkpoint_format": "gptq" if v1 else "gptq_v2", "static_groups": False, "true_sequential": True}
    weights = {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": "group" if group else "channel",
               "group_size": group, "dynamic": False, "actorder": "group" if act_order else None, "observer": "minmax"}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ["lm_head"]}
