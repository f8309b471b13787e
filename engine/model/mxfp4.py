"""MXFP4 (OCP Microscaling FP4) experts kept packed, as gpt-oss's released checkpoints store them (W4A16-style):
each weight a 4-bit E2M1 value, two a byte (the low nibble first), and one E8M0 scale byte (a power of two,
exponent + 127) per 32 values along the input: 4.25 bits a weight, a quarter of bf16's and a bit more. vLLM
serves them so too; gpt-oss-120b's experts are 61 GB packed and ~230 GB in bf16.

`Mxfp4Experts` holds each projection as `*_blocks` uint8 [experts, out, in / 32, 16] and `*_scales` uint8
[experts, out, in / 32] (the engine's [out, in] orientation, gates before ups: engine/model/gpt_oss_weights.py),
and computes only with the experts a step's tokens were routed to, one at a time: unpack through the E2M1
table in the activation's dtype (every E2M1 value times a power of two is exact in bf16 and float32, so this
equals dequantizing at load and casting), scale, matmul. No fused kernel: torch on CPU and CUDA alike; an
expert's bf16 copy lives only while its tokens are multiplied. `--dequantize-mxfp4` (transformers'
`Mxfp4Config(dequantize=True)`) dequantizes at load instead, to the model's dtype. The cost is a dequantization
of every routed expert each step: on a CPU decode is several times slower than from dequantized weights
(bench/gpt_oss.py), and on a GPU the bf16 copy is written and read again, where vLLM's fused kernels read the
4.25 bits alone (what engine/roofline.py prices).

Tensor parallelism cuts every expert's width as for bf16 experts (engine/model/parallel.py): gate/up by output
rows, down by input columns, which must stay whole 32-value blocks."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from torch import nn

from engine.model.moe import Experts, SparseMoE
from engine.model.quant_config import QuantizationError

# E2M1: the 16 values a nibble codes (transformers' FP4_VALUES, OCP MX's order).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SCALE_BIAS = 127
BLOCK = 32  # values sharing a scale


@cache
def _byte_values(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[256, 2]: the two E2M1 values each byte holds, the low nibble's first (one lookup a byte)."""
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=device)
    return torch.stack([lut.repeat(16), lut.repeat_interleave(16)], dim=-1)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """blocks [..., groups, 16] uint8, scales [..., groups] uint8 -> `dtype` [..., groups * 32], the values of
    transformers' `convert_moe_packed_tensors` (E2M1 table, x 2^(scale - 127)); a byte-pair table and a multiply
    by the power of two (exact) rather than two nibble lookups and `ldexp`: 3x faster on a CPU."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} do not match scales {tuple(scales.shape)}")
    pairs = _byte_values(dtype, blocks.device)
    values = pairs.index_select(0, blocks.flatten().int()).view(*blocks.shape[:-1], BLOCK)  # [..., G, 32]
    powers = torch.exp2((scales.to(torch.int32) - SCALE_BIAS).to(dtype))
    return (values * powers.unsqueeze(-1)).flatten(-2)


def is_mxfp4_checkpoint(model_dir: str | Path) -> bool:
    raw = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config") or {}
    return raw.get("quant_method") == "mxfp4"


class Mxfp4Experts(Experts):
    """Experts whose gate/up and down weights stay MXFP4; biases stay in the model's dtype."""

    groupable = False  # no grouped matmul over packed weights: SparseMoE loops over the routed experts

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, bias: bool = False,
                 swiglu_limit: float | None = None, swiglu_alpha: float = 1.702, tp_size: int = 1) -> None:
        nn.Module.__init__(self)
        for what, width in (("hidden size", hidden_size), ("expert width", intermediate_size)):
            if width % BLOCK:
                where = f" ({intermediate_size * tp_size} across {tp_size} ranks)" if tp_size > 1 else ""
                raise QuantizationError(
                    f"MXFP4 experts: the {what} {width}{where} is not whole {BLOCK}-value blocks, which cannot be "
                    "cut: choose a tensor_parallel_size that leaves each rank whole blocks, or --dequantize-mxfp4")
        self.intermediate_size = intermediate_size
        self.swiglu_limit, self.swiglu_alpha = swiglu_limit, swiglu_alpha
        for leaf, out, inputs in (("gate_up_proj", 2 * intermediate_size, hidden_size),
                                  ("down_proj", hidden_size, intermediate_size)):
            groups = inputs // BLOCK
            blocks = torch.empty(num_experts, out, groups, BLOCK // 2, dtype=torch.uint8)
            scales = torch.empty(num_experts, out, groups, dtype=torch.uint8)
            setattr(self, f"{leaf}_blocks", nn.Parameter(blocks, requires_grad=False))
            setattr(self, f"{leaf}_scales", nn.Parameter(scales, requires_grad=False))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size)) if bias else None
        self.down_proj_bias = nn.Parameter(torch.empty(num_experts, hidden_size)) if bias else None

    def expert_weights(self, expert: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return (dequantize_mxfp4(self.gate_up_proj_blocks[expert], self.gate_up_proj_scales[expert], dtype),
                dequantize_mxfp4(self.down_proj_blocks[expert], self.down_proj_scales[expert], dtype))


def pack_experts(model: nn.Module, tp_size: int = 1) -> None:
    """Swaps every SparseMoE's experts for MXFP4 ones of the same shape (on the meta device, before loading)."""
    for module in model.modules():
        if isinstance(module, SparseMoE):
            e = module.experts
            module.experts = Mxfp4Experts(e.num_experts, e.hidden_size, e.intermediate_size,
                                          e.gate_up_proj_bias is not None, e.swiglu_limit, e.swiglu_alpha, tp_size)
