"""LoRA adapters served on one base model (vLLM's multi-LoRA): each request may name an adapter, and a
step mixes requests of several adapters and of the base model.

An adapter is a PEFT folder (`adapter_config.json`, `adapter_model.safetensors`): for some of a layer's
projections, low-rank factors A [r, in] and B [out, r] whose product, times `lora_alpha / r` (or
`/ sqrt(r)` with rsLoRA), is added to the weight. Nothing is merged: each projection adds
`x @ A.T @ B.T` for the rows of the step's batch that use that adapter, one pair of small matmuls per
adapter present in the step (the base model's rows cost nothing more). For the packed q/k/v and gate/up
projections, the parts' factors are joined at load (A stacked, B block-diagonal), so one pair of matmuls
covers all of a packed projection's parts. Phi-3's adapters target its fused `qkv_proj` / `gate_up_proj`:
their B is cut into the parts' rows, each part keeping the shared A.

Refused with a reason rather than served wrong: DoRA, LoRA biases, per-module ranks or alphas, trained
embeddings or heads (`modules_to_save`), and LoRA on mixture-of-experts experts."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from engine.model.config import ModelConfig
from engine.model.int4_linear import Int4Linear
from engine.model.layers import PackedLinear
from engine.model.quant_linear import QuantizedLinear

# A checkpoint projection -> (the module of ours that holds it, its part of that module's output).
TARGETS = {"q_proj": ("self_attn.qkv_proj", 0), "k_proj": ("self_attn.qkv_proj", 1),
           "v_proj": ("self_attn.qkv_proj", 2), "o_proj": ("self_attn.o_proj", 0),
           "gate_proj": ("mlp.gate_up_proj", 0), "up_proj": ("mlp.gate_up_proj", 1), "down_proj": ("mlp.down_proj", 0)}
# Phi-3's fused projections -> the parts they stack.
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_TENSOR = re.compile(r"(?:base_model\.model\.)?model\.layers\.(?P<layer>\d+)\.(?P<block>self_attn|mlp)\."
                     r"(?P<projection>\w+)\.lora_(?P<factor>[AB])(?:\.\w+)?\.weight")


class LoRAError(ValueError):
    """An adapter folder that cannot be served, and why."""


@dataclass
class LoRAWeights:
    """One adapter's factors, by layer and module of ours: A [parts x r, in] and B [out, parts x r], B
    scaled and block-diagonal over a packed module's parts (zero where a part has no adapter)."""

    path: str
    rank: int
    scaling: float
    layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]
    num_params: int  # the factors' parameters in the adapter's file


def load_lora(path: str | Path, config: ModelConfig, max_rank: int, dtype: torch.dtype,
              device: torch.device) -> LoRAWeights:
    """Read a PEFT LoRA folder for a model of `config`, checking it fits (LoRAError says why not)."""
    folder = Path(path)
    if config.mla:
        raise LoRAError(f"{config.model_type}: LoRA adapters on multi-head latent attention are not supported")
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise LoRAError(f"{folder} is not a LoRA adapter folder (no adapter_config.json)")
    settings = json.loads(config_path.read_text())
    rank, alpha = int(settings.get("r", 8)), float(settings.get("lora_alpha", 8))
    _check_settings(settings, rank, max_rank)
    scaling = alpha / math.sqrt(rank) if settings.get("use_rslora") else alpha / rank
    weights_path = folder / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise LoRAError(f"{folder} has no adapter_model.safetensors (adapter_model.bin is not read: convert it)")
    factors: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    with safe_open(str(weights_path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
            match = _TENSOR.fullmatch(name)
            if match is None or match["projection"] not in (*TARGETS, *FUSED) or ".experts." in name:
                raise LoRAError(f"{folder}: LoRA on {name!r} is not supported (only the attention and dense MLP "
                                f"projections: {', '.join(TARGETS)})")
            layer = int(match["layer"])
            if layer >= config.num_layers:
                raise LoRAError(f"{folder}: {name!r} names layer {layer}, the model has {config.num_layers}")
            if match["block"] == "mlp" and config.is_sparse(layer):
                raise LoRAError(f"{folder}: layer {layer}'s MLP is a mixture of experts; LoRA there is not supported")
            factors.setdefault((layer, match["projection"]), {})[match["factor"]] = f.get_tensor(name)
    if not factors:
        raise LoRAError(f"{folder}: adapter_model.safetensors holds no LoRA factors")
    num_params = sum(t.numel() for pair in factors.values() for t in pair.values())
    factors = _split_fused(factors, config, rank, folder)
    parts: list[dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]]] = [{} for _ in range(config.num_layers)]
    for (layer, projection), pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise LoRAError(f"{folder}: layer {layer} {projection} has lora_{''.join(pair)} without its pair")
        a, b = pair["A"], pair["B"]
        in_size, out_size = projection_shape(config, projection)
        if a.shape != (rank, in_size) or b.shape != (out_size, rank):
            raise LoRAError(f"{folder}: layer {layer} {projection}: factors {tuple(a.shape)} and {tuple(b.shape)}, "
                            f"expected ({rank}, {in_size}) and ({out_size}, {rank}) for this model at r={rank}")
        module, part = TARGETS[projection]
        parts[layer].setdefault(module, []).append((part, a.to(torch.float32), b.to(torch.float32) * scaling))
    layers = [{module: _joined(config, module, found, dtype, device) for module, found in layer.items()}
              for layer in parts]
    return LoRAWeights(str(folder), rank, scaling, layers, num_params)


def _split_fused(factors: dict[tuple[int, str], dict[str, torch.Tensor]], config: ModelConfig, rank: int,
                 folder: Path) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """Each fused projection's pair as its parts' pairs: B's rows cut by part, A shared."""
    out = {}
    for (layer, projection), pair in factors.items():
        if projection not in FUSED:
            out[(layer, projection)] = pair
            continue
        sizes = [projection_shape(config, part)[1] for part in FUSED[projection]]
        if set(pair) != {"A", "B"} or pair["B"].shape != (sum(sizes), rank):
            raise LoRAError(f"{folder}: layer {layer} {projection}: expected lora_A and lora_B of "
                            f"({sum(sizes)}, {rank}) for this model at r={rank}")
        for part, b in zip(FUSED[projection], pair["B"].split(sizes), strict=True):
            if (layer, part) in factors:
                raise LoRAError(f"{folder}: layer {layer} has both {projection} and {part}")
            out[(layer, part)] = {"A": pair["A"], "B": b}
    return out


def _joined(config: ModelConfig, module: str, found: list[tuple[int, torch.Tensor, torch.Tensor]],
            dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A module's parts as one pair: A stacked over the parts, B placing each part's rank columns in
    that part's output rows."""
    sizes = [projection_shape(config, p)[1] for p, (m, _) in TARGETS.items() if m == module]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    a = torch.cat([a for _, a, _ in found])
    b = torch.zeros(sum(sizes), a.shape[0])
    column = 0
    for part, part_a, part_b in found:
        b[offsets[part] : offsets[part] + part_b.shape[0], column : column + part_a.shape[0]] = part_b
        column += part_a.shape[0]
    return a.to(device, dtype), b.to(device, dtype)


def _check_settings(settings: dict, rank: int, max_rank: int) -> None:
    if settings.get("peft_type", "LORA") != "LORA":
        raise LoRAError(f"a {settings['peft_type']} adapter is not a LoRA one")
    refusals = {"use_dora": "DoRA adapters", "modules_to_save": "trained embeddings or heads (modules_to_save)",
                "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas (alpha_pattern)",
                "fan_in_fan_out": "fan_in_fan_out (GPT-2's Conv1D) weights"}
    for key, what in refusals.items():
        if settings.get(key):
            raise LoRAError(f"{what} are not supported")
    if settings.get("bias", "none") != "none":
        raise LoRAError(f"LoRA biases (bias: {settings['bias']!r}) are not supported")
    if not 0 < rank <= max_rank:
        raise LoRAError(f"the adapter's rank {rank} is above this engine's max_lora_rank {max_rank}")


def projection_shape(config: ModelConfig, projection: str) -> tuple[int, int]:
    """(in, out) features of a checkpoint projection of this model."""
    hidden, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    size = config.intermediate_size
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, size), "up_proj": (hidden, size), "down_proj": (size, hidden)}[projection]


@dataclass
class LoRAStep:
    """Which adapters the current step's rows use: the runner sets it before each forward pass."""

    adapters: dict[int, LoRAWeights] = field(default_factory=dict)  # resident, by id
    groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)  # (id, its rows; None: all)


class LoRALinear(nn.Module):
    """A projection plus, for the rows of each adapter in the step, that adapter's low-rank delta."""

    def __init__(self, base: nn.Linear | QuantizedLinear | Int4Linear, step: LoRAStep, layer: int, name: str) -> None:
        super().__init__()
        self.base = base
        self.step = step
        self.layer = layer
        self.name = name

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        assert isinstance(self.base, PackedLinear | QuantizedLinear | Int4Linear)
        return self.base.split(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for lora_id, rows in self.step.groups:
            factors = self.step.adapters[lora_id].layers[self.layer].get(self.name)
            if factors is None:
                continue
            a, b = factors
            if rows is None:
                out.add_((x @ a.T) @ b.T)
            else:
                out.index_add_(0, rows, (x.index_select(0, rows) @ a.T) @ b.T)
        return out


def weights_to(weights: LoRAWeights, device: torch.device) -> LoRAWeights:
    """The same factors on `device` (unchanged where they are there already)."""
    return replace(weights, layers=[{module: (a.to(device), b.to(device)) for module, (a, b) in layer.items()}
                                    for layer in weights.layers])


def shard_lora(weights: LoRAWeights, config: ModelConfig, rank: int, size: int) -> LoRAWeights:
    """Tensor-parallel rank `rank`'s part of an adapter of the whole model `config` (engine/model/parallel.py):
    a column-parallel module's B keeps this rank's rows of each packed part, A whole; a row-parallel one's A
    keeps this rank's input columns, B whole, so each rank's delta is a partial sum the all-reduce completes."""
    if size == 1:
        return weights
    parts = {"self_attn.qkv_proj": ["q_proj", "k_proj", "v_proj"], "mlp.gate_up_proj": ["gate_proj", "up_proj"]}
    layers = []
    for layer in weights.layers:
        shard: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module, (a, b) in layer.items():
            if module in parts:
                sizes = [projection_shape(config, p)[1] for p in parts[module]]
                b = torch.cat([piece.chunk(size, dim=0)[rank] for piece in b.split(sizes, dim=0)]).contiguous()
            else:
                a = a.chunk(size, dim=1)[rank].contiguous()
            shard[module] = (a, b)
        layers.append(shard)
    return replace(weights, layers=layers)


def wrap_projections(model: nn.Module, config: ModelConfig, step: LoRAStep) -> None:
    """Put every projection an adapter may target behind a LoRALinear (after the weights are loaded)."""
    for index, layer in enumerate(model.model.layers):  # type: ignore[union-attr]
        attention = layer.self_attn
        attention.qkv_proj = LoRALinear(attention.qkv_proj, step, index, "self_attn.qkv_proj")
        attention.o_proj = LoRALinear(attention.o_proj, step, index, "self_attn.o_proj")
        if not config.is_sparse(index):
            layer.mlp.gate_up_proj = LoRALinear(layer.mlp.gate_up_proj, step, index, "mlp.gate_up_proj")
            layer.mlp.down_proj = LoRALinear(layer.mlp.down_proj, step, index, "mlp.down_proj")


@contextmanager
def projections_unwrapped(model: nn.Module) -> Iterator[None]:
    """The model's projections as the loader names them while it loads new weights (engine/weight_updates.py):
    the LoRALinear wrappers taken off, then put back."""
    wrapped: list[tuple[nn.Module, str, LoRALinear]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                wrapped.append((parent, name, child))
                setattr(parent, name, child.base)
    try:
        yield
    finally:
        for parent, name, wrapper in wrapped:
            setattr(parent, name, wrapper)
