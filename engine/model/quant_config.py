"""Which weight quantization a model is served with: `--quantization int8|fp8|int4` on a full-precision
checkpoint (its projections quantized while loading), or what a quantized checkpoint's `config.json`
says (`quantization_config`). int8 and fp8 are W8A8 (vLLM's and llm-compressor's names): each
projection's weight in 8 bits with one scale per output row, and each input row quantized to 8 bits at
run time with its own scale (per token), or with the checkpoint's one static scale. int4 is W4A16
(engine/model/int4_linear.py): each weight in 4 bits with one scale per group of `group_size` input
columns (or per row), optionally an integer zero point per group, activations in the model's dtype;
`--quantization int4` rounds to nearest in groups of 128 with zero points (asymmetric: 9% less weight
error than symmetric on bench/engine_int4.py's random weights, 23% less on heavy-tailed ones).

Checkpoints read: llm-compressor's `compressed-tensors` (`int-quantized` / `float-quantized` /
`naive-quantized` W8A8, symmetric, per channel or per tensor, activations per token or per tensor; and
`pack-quantized` W4A16, symmetric or with zero points, per group or per channel, `actorder` included),
the `fp8` method of AutoFP8 and vLLM (per-tensor weight scales, `activation_scheme` dynamic or static),
AutoAWQ's `awq` (`version: gemm` only) and GPTQ's `gptq` (4 bits, `sym` or not, `desc_act` served by
permuting each input's columns, `checkpoint_format` gptq or gptq_v2). Refused, with the reason: other
bit widths, 8-bit weight-only or 4-bit weights with quantized activations, 8-bit zero points and group
or block scales, other AWQ kernels' layouts, quantized LM heads. The embeddings, the LM head, MoE
routers and experts stay in the model's dtype (a checkpoint that quantized its experts is refused), but for
gpt-oss's MXFP4 experts, which are not a projection scheme: engine/model/mxfp4.py keeps them packed."""

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
# `--quantization int4`: llm-compressor's W4A16 group size, with zero points (see the module's docstring).
RUNTIME_INT4_GROUP_SIZE = 128
# The projections a GPTQ `modules_in_block_to_quantize` may list, as named inside a decoder layer.
_LAYER_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class QuantizationError(ValueError):
    """A checkpoint's or a flag's quantization that this engine cannot serve, and why."""


@dataclass(frozen=True)
class QuantScheme:
    """method: "int8", "fp8" (W8A8) or "int4" (W4A16); static_input: activations use the checkpoint's
    `input_scale` (one per projection) rather than a scale per token; source: "runtime" (quantized while
    loading) or the checkpoint's method ("compressed-tensors", "fp8", "awq", "gptq"), which for int4 names
    the tensors' layout; ignore: checkpoint module names (or `re:` patterns) left unquantized. int4 only:
    group_size: input columns sharing a scale (None: one scale a row); symmetric: False stores an integer
    zero point per group; act_order: columns are grouped by the checkpoint's `g_idx`, not in order;
    zero_offset: added to stored zero points (GPTQ's v1 format stores zero - 1)."""

    method: str
    static_input: bool = False
    source: str = "runtime"
    ignore: tuple[str, ...] = ()
    group_size: int | None = None
    symmetric: bool = True
    act_order: bool = False
    zero_offset: int = 0

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


def runtime_scheme(method: str) -> QuantScheme:
    """What `--quantization method` applies to a full-precision checkpoint while loading."""
    if method == "int4":
        return QuantScheme("int4", group_size=RUNTIME_INT4_GROUP_SIZE, symmetric=False)
    return QuantScheme(method)


def serving_scheme(model_dir: str | Path, requested: str | None) -> QuantScheme | None:
    """The scheme to serve `model_dir` with: its checkpoint's, which `requested` (the flag) must name if
    given, else `requested` applied while loading, else None (the model's dtype)."""
    if requested is not None and requested not in QUANTIZATIONS:
        raise QuantizationError(f"quantization {requested!r} is not one of {', '.join(QUANTIZATIONS)}")
    raw = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config")
    if raw and raw.get("quant_method") == "mxfp4":  # gpt-oss's experts, kept packed (engine/model/mxfp4.py)
        raw = None  # or dequantized as they are read; its other tensors are the model's dtype
    stored = checkpoint_scheme(raw) if raw else None
    if stored is None:
        return runtime_scheme(requested) if requested else None
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
    if method == "awq":
        return _awq_scheme(raw)
    if method == "gptq":
        return _gptq_scheme(raw)
    if method != "compressed-tensors":
        raise QuantizationError(f"quant_method {method!r} is not supported (compressed-tensors, fp8, awq and "
                                "gptq are)")
    groups = list((raw.get("config_groups") or {}).values())
    if not groups:
        raise QuantizationError("a compressed-tensors config without config_groups")
    schemes = {_group_scheme(group, group.get("format") or raw.get("format")) for group in groups}
    if len(schemes) != 1:
        raise QuantizationError("config groups with different schemes are not supported")
    return QuantScheme(**dict(schemes.pop()), source="compressed-tensors", ignore=tuple(raw.get("ignore") or ()))


def _group_scheme(group: dict, fmt: str | None) -> tuple[tuple[str, object], ...]:
    """One compressed-tensors config group as QuantScheme fields (a hashable tuple, to compare groups)."""
    targets = group.get("targets") or []
    if "Linear" not in targets:
        raise QuantizationError(f"config group targets {targets} are not supported (only ['Linear'])")
    if fmt == "pack-quantized":
        return _packed_group_scheme(group)
    if fmt not in _FORMATS:
        raise QuantizationError(f"compressed-tensors format {fmt!r} is not supported; supported: "
                                f"{', '.join((*_FORMATS, 'pack-quantized'))}")
    weights, inputs = group.get("weights") or {}, group.get("input_activations")
    kind = weights.get("type", "int")
    if weights.get("num_bits") != 8 or kind not in ("int", "float"):
        raise QuantizationError(f"{weights.get('num_bits')}-bit {kind} weights in {fmt} are not supported (8-bit "
                                "are; 4-bit ones are read from pack-quantized)")
    if not weights.get("symmetric", True):
        raise QuantizationError("asymmetric 8-bit weights (zero points) are not supported")
    if weights.get("strategy", "tensor") not in ("channel", "tensor"):
        raise QuantizationError(f"weight strategy {weights.get('strategy')!r} is not supported for 8-bit weights "
                                "(channel and tensor are)")
    if not inputs:
        raise QuantizationError("8-bit weight-only (A16) schemes are not supported: the engine multiplies 8-bit "
                                "weights in 8 bits")
    if inputs.get("num_bits") != 8 or inputs.get("type", "int") != kind or not inputs.get("symmetric", True):
        raise QuantizationError("activations must be symmetric 8-bit of the weights' type")
    dynamic, strategy = bool(inputs.get("dynamic", False)), inputs.get("strategy", "tensor")
    if (dynamic and strategy != "token") or (not dynamic and strategy != "tensor"):
        raise QuantizationError(f"{'dynamic' if dynamic else 'static'} {strategy} activation scales are not "
                                "supported (dynamic per token and static per tensor are)")
    return (("method", "int8" if kind == "int" else "fp8"), ("static_input", not dynamic))


def _packed_group_scheme(group: dict) -> tuple[tuple[str, object], ...]:
    """A pack-quantized group: W4A16, 4-bit ints eight to an int32, per group or per channel."""
    weights = group.get("weights") or {}
    bits, kind, strategy = weights.get("num_bits"), weights.get("type", "int"), weights.get("strategy")
    if bits != 4 or kind != "int":
        raise QuantizationError(f"pack-quantized {bits}-bit {kind} weights are not supported (4-bit int ones are)")
    if group.get("input_activations") or group.get("output_activations"):
        raise QuantizationError("4-bit weights with quantized activations (W4A8) are not supported: the engine "
                                "serves 4-bit weights with activations in the model's dtype (W4A16)")
    if weights.get("dynamic"):
        raise QuantizationError("dynamic 4-bit weight scales are not supported")
    if strategy not in ("group", "channel"):
        raise QuantizationError(f"4-bit weight strategy {strategy!r} is not supported (group and channel are)")
    group_size = _group_size(weights.get("group_size") if strategy == "group" else -1, "group_size")
    if strategy == "group" and group_size is None:
        raise QuantizationError("a 4-bit group strategy without a positive group_size")
    actorder = weights.get("actorder")
    if actorder not in (None, False, True, "group", "dynamic", "weight", "static"):
        raise QuantizationError(f"actorder {actorder!r} is not supported")
    # "group" (and True, "dynamic") keeps columns reordered, with weight_g_idx; "weight" undoes its order.
    return (("method", "int4"), ("group_size", group_size), ("symmetric", bool(weights.get("symmetric", True))),
            ("act_order", actorder in (True, "group", "dynamic")))


def _group_size(value: object, field: str) -> int | None:
    """A checkpoint's group size; -1 (or none) means one group a row (per channel)."""
    if value is None or value == -1:
        return None
    if not isinstance(value, int) or value <= 0:
        raise QuantizationError(f"{field} {value!r} is not a positive number of columns (or -1 for per channel)")
    return value


def _awq_scheme(raw: dict) -> QuantScheme:
    """AutoAWQ's config (transformers' AwqConfig names too): 4-bit, zero points, gemm's packing."""
    bits = raw.get("bits", raw.get("w_bit"))
    if bits != 4:
        raise QuantizationError(f"{bits}-bit AWQ weights are not supported (4-bit are)")
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise QuantizationError(f"AWQ version {version!r} packs its weights for that kernel's own layout; only "
                                "'gemm' checkpoints (AutoAWQ's default, what vLLM reads) are supported")
    if not raw.get("zero_point", True):
        raise QuantizationError("AWQ without zero points (zero_point: false) is not supported")
    group_size = _group_size(raw.get("group_size", raw.get("q_group_size", 128)), "group_size")
    # AutoAWQ skips a module whose name contains any of these.
    ignore = tuple(f"re:.*{re.escape(name)}" for name in raw.get("modules_to_not_convert") or ())
    return QuantScheme("int4", source="awq", group_size=group_size, symmetric=False, ignore=ignore)


def _gptq_scheme(raw: dict) -> QuantScheme:
    """AutoGPTQ's and GPTQModel's config: 4-bit, `sym`, `desc_act`, v1 or v2 zero points."""
    if raw.get("bits") != 4:
        raise QuantizationError(f"{raw.get('bits')}-bit GPTQ weights are not supported (4-bit are)")
    checkpoint_format = raw.get("checkpoint_format", "gptq")
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise QuantizationError(f"GPTQ checkpoint_format {checkpoint_format!r} is not supported (gptq and "
                                "gptq_v2 are)")
    if raw.get("lm_head"):
        raise QuantizationError("a GPTQ-quantized LM head (lm_head: true) is not supported")
    if raw.get("dynamic"):
        raise QuantizationError("GPTQ per-module overrides (dynamic) are not supported")
    listed = {name for block in raw.get("modules_in_block_to_quantize") or () for name in block}
    left_out = [name for name in _LAYER_PROJECTIONS if listed and name not in listed]
    # static_groups fixes each group before the columns are reordered: g_idx then keeps them in order.
    act_order = bool(raw.get("desc_act")) and not raw.get("static_groups")
    return QuantScheme("int4", source="gptq", group_size=_group_size(raw.get("group_size", 128), "group_size"),
                       symmetric=bool(raw.get("sym", True)), act_order=act_order,
                       zero_offset=1 if checkpoint_format == "gptq" else 0,
                       ignore=tuple(f"re:.*\\.{re.escape(name)}$" for name in left_out))
