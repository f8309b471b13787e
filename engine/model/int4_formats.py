"""How 4-bit checkpoints lay out a projection's weight [out, in], read into one form: `values` uint8
[out, in] in 0..15, `scales` float32 [out, groups] and `zeros` uint8 [out, groups], the weight being
(values - zeros) x scales, each group `group_size` input columns (one group a row: per channel).

- compressed-tensors `pack-quantized` (llm-compressor's W4A16): `weight_packed` int32 [out, ceil(in/8)],
  eight values an int32 along the input, value i in bits 4i..4i+3, each stored as its signed int4 plus 8;
  `weight_scale` [out, groups]; with zero points, `weight_zero_point` int32 [ceil(out/8), groups], packed
  the same way along the output (dim 0), signed plus 8 too (an older int8 [out, groups] is read as well);
  `weight_shape` [2]; with actorder "group", `weight_g_idx` [in]. Checked against compressed-tensors'
  `pack_to_int32` / `unpack_from_int32` and its `dequantize`: (q - zero_point) x scale, signed.
- AutoAWQ `gemm`: `qweight` int32 [in, out/8], `qzeros` int32 [groups, out/8], `scales` [groups, out];
  each int32 holds eight output columns in the order 0, 2, 4, 6, 1, 3, 5, 7 (its `pack`'s order_map:
  bits 4i..4i+3 hold column order_map[i]); weight = (q - zero) x scale, zeros unsigned. Checked against
  AutoAWQ's WQLinear_GEMM.from_linear.
- GPTQ (AutoGPTQ, GPTQModel): `qweight` int32 [in/8, out], eight input rows an int32 in order;
  `qzeros` int32 [groups, out/8], eight output columns in order; `scales` [groups, out]; `g_idx` [in],
  column k's group. The v1 format (`checkpoint_format: gptq`) stores each zero point minus one (AutoGPTQ's
  `pack` does `zeros -= 1`, its dequantization adds it back); gptq_v2 stores it as it is. Checked against
  AutoGPTQ's qlinear_cuda_old pack and forward.

`quantize_groups` is the round-to-nearest quantizer of `--quantization int4` and `pitstop engine quantize`;
`pack_compressed_tensors` writes its result in the first layout."""

from __future__ import annotations

import torch

from engine.model.quant_config import QuantScheme

_NIBBLES = 8  # 4-bit values an int32 holds
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)
# AutoAWQ's order_map puts column order_map[i] in nibble i; this is the nibble holding column j.
_AWQ_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)
# Each format's tensor names for values, scales, zero points and the column-to-group map.
LEAVES = {
    "compressed-tensors": {"values": "weight_packed", "scales": "weight_scale", "zeros": "weight_zero_point",
                           "g_idx": "weight_g_idx"},
    "awq": {"values": "qweight", "scales": "scales", "zeros": "qzeros", "g_idx": "g_idx"},
    "gptq": {"values": "qweight", "scales": "scales", "zeros": "qzeros", "g_idx": "g_idx"},
}


def stores_zeros(scheme: QuantScheme) -> bool:
    """Whether `scheme`'s checkpoints carry a zero-point tensor (GPTQ stores one even when symmetric)."""
    return scheme.source in ("awq", "gptq") or not scheme.symmetric


def unpack_int32(packed: torch.Tensor, dim: int, nibble_of_position: tuple[int, ...] | None = None) -> torch.Tensor:
    """uint8 values of an int32 tensor holding eight 4-bit values each along `dim`; position j of each
    eight is nibble j (bits 4j..4j+3), or nibble `nibble_of_position[j]`."""
    if packed.dtype != torch.int32:
        raise ValueError(f"4-bit values are packed in int32, got {packed.dtype}")
    nibbles = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 0xF  # [..., 8]: nibble i last
    if nibble_of_position is not None:
        nibbles = nibbles[..., list(nibble_of_position)]
    if dim == 1:
        return nibbles.reshape(packed.shape[0], -1).to(torch.uint8)
    return nibbles.permute(0, 2, 1).reshape(-1, packed.shape[1]).to(torch.uint8)


def pack_int32(values: torch.Tensor, dim: int) -> torch.Tensor:
    """compressed-tensors' packing of uint8 values 0..15: eight along `dim` an int32, the first in the
    lowest bits, padded with zeros to a multiple of eight."""
    if dim == 0:
        return pack_int32(values.T, 1).T.contiguous()
    rows, cols = values.shape
    padded = torch.zeros(rows, -(-cols // _NIBBLES) * _NIBBLES, dtype=torch.int32, device=values.device)
    padded[:, :cols] = values
    # The bits do not overlap, so the sum is their OR (int32 wraps the top nibble into the sign bit).
    return (padded.view(rows, -1, _NIBBLES) << _SHIFTS.to(values.device)).sum(dim=2, dtype=torch.int32)


def read_leaf(scheme: QuantScheme, leaf: str, tensor: torch.Tensor, out: int, columns: int,
              groups: int) -> tuple[str, torch.Tensor]:
    """("values" | "scales" | "zeros" | "g_idx", the tensor in the common form) for checkpoint tensor
    `leaf` of a projection with `out` rows, `columns` inputs and `groups` groups a row."""
    names = {name: kind for kind, name in LEAVES[scheme.source].items()}
    kind = names.get(leaf)
    if kind is None:
        raise ValueError(f"unexpected tensor {leaf!r} for a 4-bit {scheme.source} projection")
    if kind == "g_idx":
        _check_shape(leaf, tensor, (columns,))
        return kind, tensor.to(torch.int64)
    if scheme.source == "compressed-tensors":
        return kind, _compressed_tensors(leaf, kind, tensor, out, columns, groups)
    packed_along = columns if scheme.source == "gptq" and kind == "values" else out
    if kind != "scales" and packed_along % _NIBBLES:
        raise ValueError(f"{leaf}: {packed_along} values do not pack eight to an int32")
    _check_shape(leaf, tensor, {"values": (columns // _NIBBLES, out) if scheme.source == "gptq" else
                                (columns, out // _NIBBLES), "scales": (groups, out),
                                "zeros": (groups, out // _NIBBLES)}[kind])
    if kind == "scales":
        return kind, tensor.float().T.contiguous()
    if scheme.source == "gptq" and kind == "values":
        return kind, unpack_int32(tensor, 0).T.contiguous()
    order = _AWQ_NIBBLE_OF_COLUMN if scheme.source == "awq" else None
    unpacked = unpack_int32(tensor, 1, order).T.contiguous()
    if kind == "zeros" and scheme.zero_offset:
        unpacked = unpacked + scheme.zero_offset  # GPTQ v1: a stored 15 reads as 16, as its kernels read it
    return kind, unpacked


def _compressed_tensors(leaf: str, kind: str, tensor: torch.Tensor, out: int, columns: int,
                        groups: int) -> torch.Tensor:
    if kind == "values":
        _check_shape(leaf, tensor, (out, -(-columns // _NIBBLES)))
        return unpack_int32(tensor, 1)[:, :columns].contiguous()
    if kind == "scales":
        _check_shape(leaf, tensor, (out, groups))
        return tensor.float().contiguous()
    if tensor.dtype == torch.int8:  # zero points saved unpacked, signed
        _check_shape(leaf, tensor, (out, groups))
        return (tensor.to(torch.int16) + 8).to(torch.uint8)
    _check_shape(leaf, tensor, (-(-out // _NIBBLES), groups))
    return unpack_int32(tensor, 0)[:out].contiguous()


def _check_shape(leaf: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{leaf}: expected shape {expected}, got {tuple(tensor.shape)}")


def quantize_groups(weight: torch.Tensor, group_size: int, symmetric: bool) -> tuple[torch.Tensor, ...]:
    """Round to nearest, one scale (and zero point) a group: (values, scales, zeros) in the common form.
    Scales are rounded up to the weight's dtype first, so a checkpoint that stores them in it reads back
    exactly what was computed (and no value is clipped by a scale rounded down: half a step at most). Symmetric: scale = max |w| / 7.5 and zero 8, as llm-compressor and GPTQ
    set it; asymmetric: the group's range, zero included, over 15 steps, zero = round(-min / scale)."""
    out, columns = weight.shape
    grouped = weight.float().reshape(out, columns // group_size, group_size)
    tiny = torch.finfo(torch.float32).tiny
    low = grouped.amin(dim=2).clamp(max=0)
    spread = grouped.abs().amax(dim=2) / 7.5 if symmetric else (grouped.amax(dim=2).clamp(min=0) - low) / 15
    scales = _round_up_to(spread.clamp(min=tiny), weight.dtype).clamp(min=tiny)
    zeros = torch.full_like(scales, 8) if symmetric else (-low / scales).round().clamp(0, 15)
    values = (grouped / scales[..., None]).round() + zeros[..., None]
    return (values.clamp(0, 15).to(torch.uint8).reshape(out, columns), scales,
            zeros.to(torch.uint8))


def _round_up_to(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 `values` moved up to the next number `dtype` holds, where they are not one already."""
    rounded = values.to(dtype)
    up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
    return torch.where(rounded.float() < values, up, rounded).float()


def pack_compressed_tensors(values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                            dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One projection's pack-quantized tensors (names after the module's), scales in `dtype`."""
    tensors = {"weight_packed": pack_int32(values, 1), "weight_scale": scales.to(dtype).contiguous(),
               "weight_shape": torch.tensor(values.shape, dtype=torch.int64)}  # as compressed-tensors saves it
    if zeros is not None:
        tensors["weight_zero_point"] = pack_int32(zeros, 0)
    return tensors
