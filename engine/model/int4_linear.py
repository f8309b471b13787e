"""W4A16 projections (engine/model/quant_config.py): the weight [out, in] in 4 bits with a scale and an
integer zero point per group of `group_size` input columns (or per row), activations in the model's
dtype: x @ ((q - zero) x scale).T.

Each checkpoint tensor is read into one form (engine/model/int4_formats.py) and kept, while loading, as
plain nibbles [out, in/2] (even column in the high half), float32 scales and uint8 zeros; the loader
calls `begin_loading` and `finish_loading` around a checkpoint, and the latter moves the weight to
torch's tinygemm int4 kernels where the shape allows:

- CPU: `_convert_weight_to_int4pack_for_cpu` / `_weight_int4pack_mm_for_cpu`, bf16 activations (the
  input is cast to bf16 and the output back: float32 inputs take the kernel's slow path); out a multiple
  of 16, groups of 32, 64, 128 or 256 columns.
- CUDA (sm80+): `_convert_weight_to_int4pack` (the plain nibbles, inner k tiles of 8, 4 or 2) /
  `_weight_int4pack_mm`, bf16; out a multiple of 8, in a multiple of 16 x inner k tiles. Written to
  torch's documented contract but never run: no GPU was lent to the task that wrote it.

Both compute x @ ((q - 8) x scale + zero_float).T, so a zero point z is zero_float = (8 - z) x scale;
a checkpoint group larger than 256 (or a row) is the kernel's group repeated. Any other shape, device
or `KERNELS_ENABLED = False` (tests) runs the fallback: dequantize to the input's dtype, then matmul.

Act-order checkpoints (GPTQ's desc_act, compressed-tensors' actorder "group") put column k in group
g_idx[k]: the columns are sorted by group at load and each input permuted the same way per call, so the
groups are contiguous again. Under tensor parallelism the module takes whole checkpoint tensors and
keeps its rank's rows (q/k/v, gate/up) or columns (o, down: their groups must not straddle ranks)."""

from __future__ import annotations

import torch
from torch import nn

from engine.model.int4_formats import LEAVES, quantize_groups, read_leaf, stores_zeros
from engine.model.quant_config import QuantizationError, QuantScheme

KERNELS_ENABLED = True
_KERNEL_GROUPS = (256, 128, 64, 32)
_CUDA_INNER_K_TILES = (8, 4, 2)


class Int4Linear(nn.Module):
    """A projection with 4-bit weights; `output_sizes` names its packed parts (one for a plain one).
    in_features and output_sizes are this rank's; `split_inputs` says the ranks share the input columns
    (o, down) rather than the output rows."""

    # Its weights, rebuilt whenever a checkpoint loads: what a level 2 sleep drops (engine/runner_sleep.py).
    checkpoint_buffers = ("qweight", "scales", "zeros", "scales_and_zeros", "perm", "bias")

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool, scheme: QuantScheme,
                 dtype: torch.dtype, tp_rank: int = 0, tp_size: int = 1, split_inputs: bool = False,
                 name: str = "projection") -> None:
        super().__init__()
        out = sum(output_sizes)
        self.in_features, self.out_features, self.output_sizes, self.scheme = in_features, out, output_sizes, scheme
        self.tp_rank, self.tp_size, self.split_inputs = tp_rank, tp_size, split_inputs and tp_size > 1
        self.full_in = in_features * tp_size if self.split_inputs else in_features
        self.group_size = scheme.group_size or in_features  # per channel: a rank's columns share the row's scale
        if self.full_in % self.group_size or in_features % self.group_size or in_features % 2:
            where = f" ({tp_size} ranks take {in_features} each)" if self.split_inputs else ""
            raise QuantizationError(f"{name}'s {self.full_in} input columns{where} are not whole groups of "
                                    f"{self.group_size}: choose a group size that divides them "
                                    "(pitstop engine quantize --group-size)")
        if self.split_inputs and scheme.act_order:
            raise QuantizationError(f"act-order (desc_act / actorder group) weights cannot be split across "
                                    f"tensor-parallel ranks: {name}'s column order spans the ranks' columns")
        groups = in_features // self.group_size
        self.register_buffer("qweight", torch.empty(out, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.empty(out, groups, dtype=torch.float32))
        self.register_buffer("zeros", torch.empty(out, groups, dtype=torch.uint8))
        self.register_buffer("scales_and_zeros", None)  # the kernel's bf16 [in / kernel_group, out, 2]
        self.register_buffer("perm", None)  # act order: the input columns' order, by group
        self.register_buffer("bias", torch.empty(out, dtype=dtype) if bias else None)
        self.kernel: str | None = None  # "cpu" / "cuda": qweight holds that kernel's layout
        self.kernel_group = 0
        self._filled: set[str] = set()
        self._g_idx: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.output_sizes}, int4 {self.scheme.source}, group={self.group_size}, "
                f"symmetric={self.scheme.symmetric}, kernel={self.kernel}")

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.split(self.output_sizes, dim=-1)

    def checkpoint_keys(self) -> list[str]:
        """The loader's keys (engine/model/loader.py) this module needs, `leaf:part`, one set a part."""
        if self.scheme.source == "runtime":
            leaves = ["weight"]
        else:
            names = LEAVES[self.scheme.source]
            leaves = [names["values"], names["scales"]]
            leaves += [names["zeros"]] if stores_zeros(self.scheme) else []
            leaves += [names["g_idx"]] if self.scheme.act_order else []
        leaves += ["bias"] if self.bias is not None else []
        return [f"{leaf}:{part}" for part in range(len(self.output_sizes)) for leaf in leaves]

    def begin_loading(self) -> None:
        """Ready for a checkpoint's tensors: the plain layout back if a kernel's holds the weight."""
        self._filled, self._g_idx = set(), None
        if self.kernel is None:
            return
        device, out, groups = self.qweight.device, self.out_features, self.in_features // self.group_size
        self.qweight = torch.empty(out, self.in_features // 2, dtype=torch.uint8, device=device)
        self.scales = torch.empty(out, groups, dtype=torch.float32, device=device)
        self.zeros = torch.empty(out, groups, dtype=torch.uint8, device=device)
        self.scales_and_zeros, self.perm, self.kernel = None, None, None

    def load_part(self, leaf: str, part: int, tensor: torch.Tensor) -> list[str]:
        """Reads one checkpoint tensor of part `part` (the whole tensor, not a rank's share); a
        full-precision `weight` is quantized here. Returns the loader keys it filled."""
        rows, out = self._rows(part)
        full_out = out * self.tp_size if not self.split_inputs and self.tp_size > 1 else out
        full_groups = self.full_in // (self.scheme.group_size or self.full_in)
        if leaf == "bias" and self.bias is not None:
            self.bias.data[rows].copy_(self._share(tensor[:, None], out, 1)[:, 0] if not self.split_inputs else
                                       tensor if self.tp_rank == 0 else torch.zeros_like(tensor))
        elif leaf == "weight_shape" and self.scheme.source == "compressed-tensors":
            if tensor.tolist() != [full_out, self.full_in]:
                raise ValueError(f"weight_shape part {part}: {tensor.tolist()}, expected {[full_out, self.full_in]}")
            return []
        elif leaf == "weight" and self.scheme.source == "runtime":
            if tuple(tensor.shape) != (full_out, self.full_in):
                raise ValueError(f"weight part {part}: expected shape {(full_out, self.full_in)}, got {tuple(tensor.shape)}")
            for kind, value in zip(("values", "scales", "zeros"),
                                   quantize_groups(tensor, self.scheme.group_size or self.full_in, self.scheme.symmetric),
                                   strict=True):
                self._store(kind, rows, self._share(value, out, self.full_in // value.shape[1]))
        else:
            kind, value = read_leaf(self.scheme, leaf, tensor, full_out, self.full_in, full_groups)
            if kind == "g_idx":
                self._store_g_idx(part, value)
            else:
                columns_each = 1 if kind == "values" else self.full_in // full_groups
                self._store(kind, rows, self._share(value, out, columns_each))
        key = f"{leaf}:{part}"
        self._filled.add(key)
        return [key]

    def _rows(self, part: int) -> tuple[slice, int]:
        offset, size = sum(self.output_sizes[:part]), self.output_sizes[part]
        return slice(offset, offset + size), size

    def _share(self, value: torch.Tensor, out: int, columns_each: int) -> torch.Tensor:
        """This rank's part of a whole part's [rows, columns] tensor (`columns_each` inputs a column)."""
        if self.tp_size == 1:
            return value
        if not self.split_inputs:
            return value[self.tp_rank * out:(self.tp_rank + 1) * out]
        if value.shape[1] == 1 and columns_each == self.full_in:  # per channel: every rank keeps the row's scale
            return value
        width = self.in_features // columns_each
        return value[:, self.tp_rank * width:(self.tp_rank + 1) * width]

    def _store(self, kind: str, rows: slice, value: torch.Tensor) -> None:
        if kind == "values":
            value = (value[:, 0::2] << 4) | value[:, 1::2]
            self.qweight.data[rows].copy_(value)
        else:
            getattr(self, kind).data[rows].copy_(value)

    def _store_g_idx(self, part: int, g_idx: torch.Tensor) -> None:
        if self._g_idx is not None and not torch.equal(self._g_idx, g_idx):
            raise QuantizationError(f"the packed parts of one projection have different act-order column orders "
                                    f"(g_idx of part {part}); they share one input")
        self._g_idx = g_idx

    def finish_loading(self) -> None:
        """After every part's tensors: zero points of a symmetric checkpoint, the act-order permutation,
        and the kernel's layout where it applies."""
        missing = sorted(set(self.checkpoint_keys()) - self._filled)
        if missing:
            raise ValueError(f"4-bit projection without {', '.join(missing)}")
        if not stores_zeros(self.scheme) and self.scheme.source != "runtime":
            self.zeros.fill_(8)
        self._sort_columns_by_group()
        self._to_kernel()

    def _sort_columns_by_group(self) -> None:
        g_idx = self._g_idx
        if g_idx is None or bool((g_idx < 0).any()):  # compressed-tensors' -1: not initialised, column order
            return
        if torch.equal(g_idx.cpu(), torch.arange(self.full_in) // (self.scheme.group_size or self.full_in)):
            return  # columns in order: GPTQ saves g_idx without desc_act too
        if self.split_inputs:
            raise QuantizationError("act-order weights cannot be split across tensor-parallel ranks")
        groups = self.in_features // self.group_size
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups or bool(
                (torch.bincount(g_idx.cpu(), minlength=groups) != self.group_size).any()):
            raise ValueError(f"g_idx does not give each of {groups} groups {self.group_size} columns")
        perm = torch.argsort(g_idx.cpu(), stable=True).to(self.qweight.device)
        values = unpack_nibbles(self.qweight).index_select(1, perm)
        self.qweight.copy_((values[:, 0::2] << 4) | values[:, 1::2])
        self.perm = perm

    def _to_kernel(self) -> None:
        device, out = self.qweight.device, self.out_features
        group = next((g for g in _KERNEL_GROUPS if self.group_size % g == 0), 0)
        if not KERNELS_ENABLED or not group:
            return
        if device.type == "cpu" and out % 16 == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(self.qweight).to(torch.int32), 1)
            self.kernel = "cpu"
        elif device.type == "cuda" and out % 8 == 0 and torch.cuda.get_device_capability(device) >= (8, 0):
            tiles = next((t for t in _CUDA_INNER_K_TILES if self.in_features % (16 * t) == 0), 0)
            if not tiles:
                return
            packed = torch.ops.aten._convert_weight_to_int4pack(self.qweight.contiguous(), tiles)
            self.kernel = "cuda"
        else:
            return
        repeat = self.group_size // group
        zero_float = (8 - self.zeros.float()) * self.scales
        pairs = torch.stack([self.scales, zero_float], dim=-1).repeat_interleave(repeat, dim=1)  # [out, in/g, 2]
        self.scales_and_zeros = pairs.transpose(0, 1).contiguous().to(torch.bfloat16)
        self.kernel_group, self.qweight = group, packed
        self.scales, self.zeros = None, None  # their content lives in scales_and_zeros now

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.perm is not None:
            rows = rows.index_select(1, self.perm)
        if rows.shape[0] == 0:
            out = rows.new_empty(0, self.out_features)
        elif self.kernel is None:
            out = rows @ self.dequantized().to(rows.dtype).T
        else:
            mm = (torch.ops.aten._weight_int4pack_mm_for_cpu if self.kernel == "cpu"
                  else torch.ops.aten._weight_int4pack_mm)
            out = mm(rows.to(torch.bfloat16).contiguous(), self.qweight, self.kernel_group,
                     self.scales_and_zeros).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """float32 [out, in]: (q - zero) x scale, columns in the order the forward feeds them (sorted by
        group under act order). The fallback's weight; needs the plain layout (kernel None)."""
        if self.kernel is not None:
            raise RuntimeError("the weight is in a kernel's layout; dequantize before finish_loading moves it")
        values = unpack_nibbles(self.qweight).float()
        zeros = self.zeros.float().repeat_interleave(self.group_size, dim=1)
        return (values - zeros) * self.scales.repeat_interleave(self.group_size, dim=1)


def unpack_nibbles(plain: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in] from the plain layout [out, in/2], the even column in each byte's high half."""
    return torch.stack([plain >> 4, plain & 0xF], dim=-1).reshape(plain.shape[0], -1)
