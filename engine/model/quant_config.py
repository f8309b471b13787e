"""Which weight quantization a model is served with: `--quantization int8|fp8` on a full-precision
checkpoint (its projections quantized while loading), or what a quantized checkpoint's `config.json`
says (`quantization_config`). Both are W8A8 (vLLM's and llm-compressor's names): each projection's
weight in 8 bits with one scale per output row, and each input row quantized to 8 bits at run time
with its own scale (per token), or with the checkpoint's one static scale.

Checkpoints read: llm-compressor's `compressed-tensors` (`int-quantized` / `float-quantized` /
`naive-quantized` formats, symmetric, per channel or per tensor, activations per token or per tensor)
and the `fp8` method of AutoFP8 and vLLM (per-tensor weight scales, `activation_scheme` dynamic or
static). Refused, with the reason: 4-bit and packed weights, weight-only (A16) schemes, asymmetric
zero points, group or block scales. The embeddings, the LM head, MoE routers and experts stay in the
model's dtype (a checkpoint that quantized its experts is refused)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import QUANTIZATIONS

WEIGHT_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
# The largest magnitude each format stores: int8 keeps -128 out for symmetry, as llm-compressor does.
QUANT_MAX = {"int8": 127.0, "fp8": float(torch.finfo(torch.float8_e4m3fn).max)}
_FORMATS = ("int-quantized", "float-quantized", "naive-quantized")


class QuantizationError(ValueError):
    """A checkpoint's or a flag's quantization that this engine cannot serve, and why."""


@dataclass(frozen=True)
class QuantScheme:
    """method: "int8" or "fp8"; static_input: activations use the checkpoint's `input_scale` (one per
    projection) rather than a scale per token; source: "runtime" (quantized while loading) or the
    checkpoint's method; ignore: checkpoint module names (or `re:` patterns) left unquantized."""

    method: str
    static_input: bool = False
    source: str = "runtime"
    ignore: tuple[str, ...] = ()

    @property
    def weight_dtype(self) -> torch.dtype:
        return WEIGHT_DTYPES[self.method]

    @property
    def quant_max(self) -> float:
        return QUANT_MAX[self.method]

    def quantizes(self, module: str) -> bool:
        """Whether checkpoint module `module` (e.g. `model.layers.0.self_attn.q_proj`) is quantized."""
        for name in self.ignore:
            if name.startswith("re:"):
                if re.match(name[3:], module):
                    return False
            elif name == module or module.endswith("." + name):
                return False
        return True


def serving_scheme(model_dir: str | Path, requested: str | None) -> QuantScheme | None:
    """The scheme to serve `model_dir` with: its checkpoint's, which `requested` (the flag) must name if
    given, else `requested` applied while loading, else None (the model's dtype)."""
    if requested is not None and requested not in QUANTIZATIONS:
        raise QuantizationError(f"quantization {requested!r} is not one of {', '.join(QUANTIZATIONS)}")
    raw = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config")
    stored = checkpoint_scheme(raw) if raw else None
    if stored is None:
        return QuantScheme(requested) if requested else None
    if requested is not None and requested != stored.method:
        raise QuantizationError(f"the checkpoint is quantized as {stored.method} ({stored.source}); "
                                f"--quantization {requested} cannot re-quantize it")
    return stored


def checkpoint_scheme(raw: dict) -> QuantScheme:
    """A `quantization_config` dict as a scheme, or a QuantizationError saying what is unsupported."""
    method = raw.get("quant_method")
    if method == "fp8":
        if raw.get("weight_block_size"):
            raise QuantizationError("block-wise fp8 weight scales (weight_block_size) are not supported")
        scheme = raw.get("activation_scheme", "dynamic")
        if scheme not in ("dynamic", "static"):
            raise QuantizationError(f"fp8 activation_scheme {scheme!r} is neither dynamic nor static")
        return QuantScheme("fp8", static_input=scheme == "static", source="fp8",
                           ignore=tuple(raw.get("ignored_layers") or ()))
    if method != "compressed-tensors":
        raise QuantizationError(f"quant_method {method!r} is not supported (compressed-tensors and fp8 are)")
    groups = list((raw.get("config_groups") or {}).values())
    if not groups:
        raise QuantizationError("a compressed-tensors config without config_groups")
    schemes = {_group_scheme(group, group.get("format") or raw.get("format")) for group in groups}
    if len(schemes) != 1:
        raise QuantizationError("config groups with different schemes are not supported")
    method, static = schemes.pop()
    return QuantScheme(method, static_input=static, source="compressed-tensors", ignore=tuple(raw.get("ignore") or ()))


def _group_scheme(group: dict, fmt: str | None) -> tuple[str, bool]:
    if fmt not in _FORMATS:
        raise QuantizationError(f"compressed-tensors format {fmt!r} is not supported (4-bit and packed weights "
                                f"are not); supported: {', '.join(_FORMATS)}")
    targets = group.get("targets") or []
    if "Linear" not in targets:
        raise QuantizationError(f"config group targets {targets} are not supported (only ['Linear'])")
    weights, inputs = group.get("weights") or {}, group.get("input_activations")
    kind = weights.get("type", "int")
    if weights.get("num_bits") != 8 or kind not in ("int", "float"):
        raise QuantizationError(f"{weights.get('num_bits')}-bit {kind} weights are not supported (8-bit are)")
    if not weights.get("symmetric", True):
        raise QuantizationError("asymmetric weights (zero points) are not supported")
    if weights.get("strategy", "tensor") not in ("channel", "tensor"):
        raise QuantizationError(f"weight strategy {weights.get('strategy')!r} is not supported (channel and tensor are)")
    if not inputs:
        raise QuantizationError("weight-only (A16) schemes are not supported: the engine multiplies in 8 bits")
    if inputs.get("num_bits") != 8 or inputs.get("type", "int") != kind or not inputs.get("symmetric", True):
        raise QuantizationError("activations must be symmetric 8-bit of the weights' type")
    dynamic, strategy = bool(inputs.get("dynamic", False)), inputs.get("strategy", "tensor")
    if (dynamic and strategy != "token") or (not dynamic and strategy != "tensor"):
        raise QuantizationError(f"{'dynamic' if dynamic else 'static'} {strategy} activation scales are not "
                                "supported (dynamic per token and static per tensor are)")
    return ("int8" if kind == "int" else "fp8"), not dynamic
