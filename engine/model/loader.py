"""Builds a CausalLM from a local Hugging Face folder: config.json plus safetensors weights, either
one `model.safetensors` or shards listed in `model.safetensors.index.json`. HF parameter names are
mapped onto our packed q/k/v and gate/up projections; tied embeddings share one tensor."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engine.model.config import ModelConfig
from engine.model.layers import PackedLinear
from engine.model.llama import CausalLM

# Checkpoint projection name -> (our packed module name, shard index inside it).
PACKED_PROJECTIONS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
# Checkpoint entries that are not parameters (buffers some exporters save).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return files


def load_model(
    model_dir: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    config: ModelConfig | None = None,
) -> CausalLM:
    model_dir = Path(model_dir)
    config = config or ModelConfig.from_dir(model_dir)
    # Build on the meta device and allocate once, uninitialised: every parameter comes from the file.
    with torch.device("meta"):
        model = CausalLM(config)
    model = model.to(dtype).to_empty(device=device)
    model.tie_weights()
    load_weights(model, safetensors_files(model_dir))
    model.setup_rope(device, dtype)
    return model.eval()


def load_weights(model: CausalLM, files: list[Path]) -> None:
    params = dict(model.named_parameters())  # tied lm_head shows up once, as embed_tokens
    modules = dict(model.named_modules())
    expected = {key for name in params for key in _expected_keys(name, modules)}
    loaded: set[str] = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue
                loaded.add(_load_one(name, f.get_tensor(name), params, modules))
    missing = expected - loaded
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} parameters, e.g. {sorted(missing)[:3]}")


def _expected_keys(param_name: str, modules: dict) -> list[str]:
    """A plain parameter is one key; a packed one is one key per checkpoint shard, `name:shard`."""
    module = modules[param_name.rpartition(".")[0]]
    if isinstance(module, PackedLinear):
        return [f"{param_name}:{shard}" for shard in range(len(module.output_sizes))]
    return [param_name]


def _load_one(name: str, tensor: torch.Tensor, params: dict, modules: dict) -> str:
    """Copies one checkpoint tensor into place and returns the key (see `_expected_keys`) it filled."""
    module_path, _, leaf = name.rpartition(".")
    parent, _, projection = module_path.rpartition(".")
    if projection in PACKED_PROJECTIONS:
        packed_name, shard = PACKED_PROJECTIONS[projection]
        target = f"{parent}.{packed_name}.{leaf}"
        module = modules[f"{parent}.{packed_name}"]
        assert isinstance(module, PackedLinear)
        module.load_shard(params[target], shard, tensor)
        return f"{target}:{shard}"
    if name not in params:
        raise ValueError(f"unexpected checkpoint tensor {name!r}")
    param = params[name]
    if param.shape != tensor.shape:
        raise ValueError(f"{name}: expected shape {tuple(param.shape)}, got {tuple(tensor.shape)}")
    param.data.copy_(tensor)
    return name
