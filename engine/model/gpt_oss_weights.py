"""gpt-oss checkpoint tensors in the engine's layout (engine/model/loader.py calls `GptOssTensors.convert` on
each tensor it reads). transformers' and the Hub's stacked experts differ from the engine's in three ways:

- `gate_up_proj` is [experts, hidden, 2 x inter] with gate and up interleaved (column 2i the i-th gate, 2i + 1
  the i-th up) and `down_proj` [experts, inter, hidden]: the engine keeps [experts, 2 x inter, hidden] with the
  gates first, and [experts, hidden, inter]; the gate/up bias is de-interleaved the same way;
- the router is `mlp.router` (the engine's `mlp.gate`);
- the released checkpoints store the experts in MXFP4 (`quantization_config.quant_method: mxfp4`): for each of
  `gate_up_proj` and `down_proj`, `*_blocks` [experts, out, in / 32, 16] uint8 holding two 4-bit E2M1 values a
  byte (the low nibble first) and `*_scales` [experts, out, in / 32] uint8, a power of two (exponent + 127) per
  32 values, already in the engine's [out, in] orientation. By default they stay packed
  (engine/model/mxfp4.py: `*_blocks` and `*_scales` go on, gate/up rows de-interleaved); with
  `--dequantize-mxfp4` they are dequantized here to the model's dtype as transformers'
  `convert_moe_packed_tensors` does. The two halves of a pair may sit in different shards, so a half waits
  for the other.
"""

from __future__ import annotations

import re

import torch

from engine.model.mxfp4 import FP4_VALUES, SCALE_BIAS, dequantize_mxfp4

__all__ = ["FP4_VALUES", "SCALE_BIAS", "GptOssTensors", "dequantize_mxfp4"]
_PACKED = re.compile(r"(?P<stem>.+\.mlp\.experts\.(gate_up_proj|down_proj))_(?P<part>blocks|scales)")
_STACKED = re.compile(r".+\.mlp\.experts\.(?P<leaf>gate_up_proj|down_proj|gate_up_proj_bias|down_proj_bias)")


def _gates_first(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Interleaved gate/up (gate at even indices of `dim`) -> all gates, then all ups."""
    moved = tensor.movedim(dim, 0)
    return torch.cat([moved[0::2], moved[1::2]]).movedim(0, dim).contiguous()


class GptOssTensors:
    """Turns a gpt-oss checkpoint's tensors into the engine's, one at a time; `finish` says whether an MXFP4
    half is left without its pair. `packed`: MXFP4 experts stay packed (engine/model/mxfp4.py)."""

    def __init__(self, packed: bool = False) -> None:
        self.packed = packed
        self._waiting: dict[str, dict[str, torch.Tensor]] = {}

    def convert(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        packed = _PACKED.fullmatch(name)
        if packed:
            parts = self._waiting.setdefault(packed["stem"], {})
            parts[packed["part"]] = tensor
            if len(parts) < 2:
                return []
            del self._waiting[packed["stem"]]
            stem, gate_up = packed["stem"], packed["stem"].endswith("gate_up_proj")
            if self.packed:  # [experts, out, groups(, 16)]: gate/up rows reordered as whole rows
                return [(f"{stem}_{part}", _gates_first(parts[part], 1) if gate_up else parts[part])
                        for part in ("blocks", "scales")]
            weight = dequantize_mxfp4(parts["blocks"], parts["scales"])  # [experts, out, in]: the engine's way
            return [(stem, _gates_first(weight, 1) if gate_up else weight)]
        name = name.replace(".mlp.router.", ".mlp.gate.")
        stacked = _STACKED.fullmatch(name)
        if stacked is None:
            return [(name, tensor)]
        leaf = stacked["leaf"]
        if leaf == "gate_up_proj":  # [experts, hidden, 2 x inter] interleaved
            return [(name, _gates_first(tensor.transpose(1, 2), 1))]
        if leaf == "gate_up_proj_bias":
            return [(name, _gates_first(tensor, 1))]
        if leaf == "down_proj":  # [experts, inter, hidden]
            return [(name, tensor.transpose(1, 2))]
        return [(name, tensor)]

    def finish(self) -> None:
        if self._waiting:
            stem, parts = next(iter(self._waiting.items()))
            raise ValueError(f"checkpoint has {stem}_{next(iter(parts))} without its "
                             f"{'scales' if 'blocks' in parts else 'blocks'}")
