"""An fp8 KV cache (vLLM's `--kv-cache-dtype fp8`): K and V are stored as one byte an element, half of
bf16, so the same memory holds twice the tokens. A layer's keys are divided by its `k_scale` (values by
`v_scale`) before rounding and multiplied back when read; the scales come from an fp8 checkpoint's
`self_attn.k_scale` / `v_scale` tensors, else 1.0 (vLLM's default without calibrated scales), or, with
`calculate_kv_scales`, from the first step's own K and V (each layer's largest magnitude over 200 for keys
and 100 for values, vLLM's constants: room for later values up to 2.2x and 4.5x larger). Values past fp8's
range are clamped to it rather than lost.

The cache tensor holds the bytes as uint8: CPU kernels such as `index_copy_` have no fp8 version, and a
byte copy is the same on every device. Reading widens the gathered bytes to the compute dtype: on CUDA by
a cast, on a CPU through a 256-entry table (the scale folded in), about 4x faster there than torch's cast."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.config import kv_element_bytes

# --kv-cache-dtype's fp8 names (engine/config.py KV_CACHE_DTYPES) -> the format of one element.
K_SCALE_CONSTANT, V_SCALE_CONSTANT = 200.0, 100.0  # vLLM's: a measured maximum lands there in fp8
FP8_FORMATS = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def fp8_format(kv_cache_dtype: str) -> torch.dtype | None:
    """The fp8 element type for a --kv-cache-dtype name; None for "auto" (the model's own dtype)."""
    kv_element_bytes(kv_cache_dtype, 2)  # a ValueError naming the choices for any other name
    return FP8_FORMATS.get(kv_cache_dtype)


@dataclass
class FP8KVFormat:
    """How one runner's cache stores K/V: `element` (an fp8 type) in uint8 storage, read as `dtype`."""

    element: torch.dtype
    dtype: torch.dtype  # what attention computes in
    calibrate: bool = False  # each layer measures its scales on the first step it writes (calculate_kv_scales)
    _tables: dict[tuple[float, torch.device], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def max_value(self) -> float:
        return float(torch.finfo(self.element).max)

    def measured_scales(self, k: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
        """A layer's (k, v) scales from K and V it computed: their largest magnitudes over 200 and 100."""
        return tuple(max(float(x.abs().max()), 1e-6) / constant  # type: ignore[return-value]
                     for x, constant in ((k, K_SCALE_CONSTANT), (v, V_SCALE_CONSTANT)))

    def quantize(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """[..] K or V in the compute dtype -> its fp8 bytes (uint8), clamped to fp8's range."""
        scaled = x / scale if scale != 1.0 else x
        return scaled.clamp(-self.max_value, self.max_value).to(self.element).view(torch.uint8)

    def dequantize(self, stored: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 fp8 bytes -> values in the compute dtype (into `out` when given, same shape)."""
        if stored.device.type == "cpu":
            table = self._table(scale, stored.device)
            flat = torch.index_select(table, 0, stored.reshape(-1).to(torch.int32),
                                      out=None if out is None else out.view(-1))
            return flat.view(stored.shape)
        wide = stored.view(self.element).to(self.dtype) if out is None else out.copy_(stored.view(self.element))
        return wide.mul_(scale) if scale != 1.0 else wide

    def _table(self, scale: float, device: torch.device) -> torch.Tensor:
        """Every byte's value times `scale`, in the compute dtype: a read is one lookup per element."""
        key = (scale, device)
        table = self._tables.get(key)
        if table is None:
            codes = torch.arange(256, dtype=torch.uint8, device=device).view(self.element)
            table = self._tables[key] = (codes.to(torch.float32) * scale).to(self.dtype)
        return table
