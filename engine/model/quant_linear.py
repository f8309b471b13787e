"""W8A8 projections (engine/model/quant_config.py): the weight [out, in] in int8 or fp8 with one float32
scale per output row; each call quantizes its input rows (one scale per row, or the checkpoint's static
scale), multiplies 8-bit by 8-bit with wide accumulation, and rescales by row scale x column scale.

int8 runs on `torch._int_mm` (int32 accumulation: oneDNN's VNNI/AMX kernels on CPU, cuBLAS on CUDA),
fp8 on `torch._scaled_mm` (Hopper's fp8 tensor cores; on CPU an emulation far slower than float32,
there for tests). A packed projection (q/k/v, gate/up) keeps each part's scales: per-row scales make
quantizing the parts one by one the same as quantizing the whole."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from engine.model.int4_linear import Int4Linear
from engine.model.quant_config import QuantScheme

# cuBLAS's int8 GEMM wants more than 16 rows; fewer are padded.
_CUDA_INT_MM_MIN_ROWS = 17


def quantize_rows(weight: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(8-bit weight, float32 scale per row) with each row's largest magnitude at the format's maximum."""
    wide = weight.float()
    scale = wide.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / scheme.quant_max
    return _to_format(wide / scale[:, None], scheme), scale


def _to_format(values: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    bound = scheme.quant_max
    if scheme.method == "int8":
        return values.round().clamp(-bound, bound).to(torch.int8)
    return values.clamp(-bound, bound).to(scheme.weight_dtype)


class QuantizedLinear(nn.Module):
    """A projection with 8-bit weights; `output_sizes` names its packed parts (one for a plain one)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool, scheme: QuantScheme,
                 dtype: torch.dtype) -> None:
        super().__init__()
        out = sum(output_sizes)
        self.in_features, self.out_features, self.output_sizes, self.scheme = in_features, out, output_sizes, scheme
        self.weight = nn.Parameter(torch.empty(out, in_features, dtype=scheme.weight_dtype), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(out, dtype=torch.float32), requires_grad=False)
        # Static activation scales: one per part as stored; the parts share their input, so the largest serves.
        self.input_scale = nn.Parameter(torch.empty(len(output_sizes), dtype=torch.float32),
                                        requires_grad=False) if scheme.static_input else None
        self.bias = nn.Parameter(torch.empty(out, dtype=dtype), requires_grad=False) if bias else None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.output_sizes}, {self.scheme.method}, static_input={self.scheme.static_input}"

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.split(self.output_sizes, dim=-1)

    def checkpoint_keys(self, name: str) -> list[str]:
        """The loader's keys (engine/model/loader.py) for parameter `name` of this module, one a part."""
        return [f"{name}:{part}" for part in range(len(self.output_sizes))]

    def load_part(self, leaf: str, part: int, tensor: torch.Tensor) -> list[str]:
        """Copies one checkpoint tensor of part `part` (`weight`, `weight_scale`, `input_scale`, `bias`);
        a full-precision weight is quantized here. Returns the loader keys it filled."""
        offset, size = sum(self.output_sizes[:part]), self.output_sizes[part]
        rows = slice(offset, offset + size)
        if leaf == "weight":
            if tuple(tensor.shape) != (size, self.in_features):
                raise ValueError(f"weight part {part}: expected shape {(size, self.in_features)}, got {tuple(tensor.shape)}")
            if tensor.dtype.itemsize == 1:
                if tensor.dtype != self.weight.dtype:
                    raise ValueError(f"the checkpoint stores {tensor.dtype} weights where {self.scheme.method} "
                                     f"expects {self.weight.dtype}")
                self.weight.data[rows].copy_(tensor)
                return [f"weight:{part}"]
            if self.scheme.source != "runtime":
                raise ValueError(f"weight part {part} is stored in {tensor.dtype} where the checkpoint's "
                                 f"quantization_config ({self.scheme.source}) says {self.scheme.method}")
            quantized, scale = quantize_rows(tensor, self.scheme)
            self.weight.data[rows].copy_(quantized)
            self.weight_scale.data[rows].copy_(scale)
            return [f"weight:{part}", f"weight_scale:{part}"]
        if leaf == "weight_scale":
            if tensor.numel() not in (1, size):
                raise ValueError(f"weight_scale part {part}: {tensor.numel()} scales for {size} rows "
                                 "(one per row or one per tensor)")
            self.weight_scale.data[rows].copy_(tensor.float().reshape(-1).expand(size))
            return [f"weight_scale:{part}"]
        if leaf == "input_scale" and self.input_scale is not None:
            if tensor.numel() != 1:
                raise ValueError(f"input_scale part {part}: one static scale expected, got {tensor.numel()}")
            self.input_scale.data[part] = tensor.float().reshape(())
            return [f"input_scale:{part}"]
        if leaf == "bias" and self.bias is not None:
            self.bias.data[rows].copy_(tensor)
            return [f"bias:{part}"]
        raise ValueError(f"unexpected checkpoint tensor {leaf!r} for a {self.scheme.method} projection")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = self._input_scales(rows)
        quantized = _to_format(rows.float() / scale, self.scheme)
        if self.scheme.method == "int8":
            out = (_int8_mm(quantized, self.weight).float() * scale * self.weight_scale).to(x.dtype)
        else:
            out = torch._scaled_mm(quantized, self.weight.t(), scale_a=scale, scale_b=self.weight_scale[None, :],
                                   out_dtype=x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def _input_scales(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [rows, 1]: the static scale, or each row's largest magnitude over the format's maximum."""
        if self.input_scale is not None:
            return self.input_scale.max().reshape(1, 1).expand(rows.shape[0], 1).contiguous()  # _scaled_mm: no strides of 0
        peak = rows.abs().amax(dim=1, keepdim=True).float()
        return peak.clamp(min=torch.finfo(torch.float32).tiny) / self.scheme.quant_max


def _int8_mm(quantized: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """int32 [rows, out] = int8 rows @ int8 weight.T."""
    count = quantized.shape[0]
    if quantized.is_cuda and count < _CUDA_INT_MM_MIN_ROWS:
        padded = quantized.new_zeros(_CUDA_INT_MM_MIN_ROWS, quantized.shape[1])
        padded[:count] = quantized
        return torch._int_mm(padded, weight.t())[:count]
    return torch._int_mm(quantized, weight.t())


def quantize_projections(model: nn.Module, scheme: QuantScheme, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Puts a QuantizedLinear, or an Int4Linear for int4 (still unallocated, on the meta device), in place
    of each projection of the dense decoder layers that `scheme` quantizes; call before the weights are
    allocated and loaded. `tp_rank` of `tp_size`: the rank an int4 projection cuts its share for."""
    config = model.config  # type: ignore[attr-defined]
    for index, layer in enumerate(model.model.layers):  # type: ignore[union-attr]
        prefix = f"model.layers.{index}"
        attention = layer.self_attn
        replace = partial(_replace, scheme=scheme, tp=(tp_rank, tp_size))
        replace(attention, "qkv_proj", [f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")])
        replace(attention, "o_proj", [f"{prefix}.self_attn.o_proj"], split_inputs=True)
        if not config.is_sparse(index):
            replace(layer.mlp, "gate_up_proj", [f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"])
            replace(layer.mlp, "down_proj", [f"{prefix}.mlp.down_proj"], split_inputs=True)


def _replace(parent: nn.Module, attribute: str, checkpoint_names: list[str], scheme: QuantScheme,
             tp: tuple[int, int], split_inputs: bool = False) -> None:
    chosen = {scheme.quantizes(name) for name in checkpoint_names}
    if len(chosen) > 1:
        raise ValueError(f"{', '.join(checkpoint_names)} share one matmul: quantize all of them or none")
    if not chosen.pop():
        return
    linear = getattr(parent, attribute)
    sizes = list(getattr(linear, "output_sizes", [linear.out_features]))
    with torch.device("meta"):
        if scheme.method == "int4":
            quantized: nn.Module = Int4Linear(linear.in_features, sizes, linear.bias is not None, scheme,
                                              linear.weight.dtype, *tp, split_inputs, name=checkpoint_names[0])
        else:
            quantized = QuantizedLinear(linear.in_features, sizes, linear.bias is not None, scheme, linear.weight.dtype)
    setattr(parent, attribute, quantized)
