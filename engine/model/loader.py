"""Builds a CausalLM from a local Hugging Face folder: config.json plus safetensors weights, either
one `model.safetensors` or shards listed in `model.safetensors.index.json`. HF parameter names are
mapped onto our packed q/k/v and gate/up projections and our stacked experts (Qwen3-MoE's
`mlp.experts.N.gate_proj`, Mixtral's `block_sparse_moe.experts.N.w1`, or transformers 5's already
stacked `mlp.experts.gate_up_proj`); tied embeddings share one tensor. An fp8 checkpoint's KV cache
scales (`self_attn.k_scale` / `v_scale`, one `kv_scale` for both, or llm-compressor's
`k_proj.output_scale` / `v_proj.output_scale`) become each layer's scales for an fp8 KV cache.
Quantized projections (engine/model/quant_linear.py, engine/model/int4_linear.py) read their own tensors
through `load_part`; a 4-bit one takes whole tensors and cuts its tensor-parallel share after unpacking
them, and is told when a checkpoint starts and ends (`begin_loading`, `finish_loading`). Phi-3's fused
`qkv_proj` and `gate_up_proj` tensors are split into the q/k/v and gate/up parts first, so sharding and
8-bit quantization treat them as any other family's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from engine.classifier_config import classifier_head
from engine.model.added_families import CHECKPOINT_NAMES, MTP_FAMILIES
from engine.model.classifier import SequenceClassifier, build_model, token_ids_of
from engine.model.config import ModelConfig
from engine.model.gpt_oss import GPT_OSS
from engine.model.gpt_oss_weights import GptOssTensors
from engine.model.int4_linear import Int4Linear
from engine.model.layers import PackedLinear
from engine.model.llama import Attention, CausalLM
from engine.model.moe import Experts
from engine.model.mxfp4 import Mxfp4Experts, pack_experts
from engine.model.parallel import SINGLE, TPGroup, shard_tensor
from engine.model.quant_config import QuantScheme
from engine.model.quant_linear import QuantizedLinear, quantize_projections
from engine.model.qwen3_vl import checkpoint_tensor

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
# A multimodal Gemma 3 folder: its language model's prefixes (the Hub's, transformers 5's) -> ours; the vision
# tower and projector are not served.
LANGUAGE_MODEL_PREFIXES = {"language_model.model.": "model.", "model.language_model.": "model.",
                           "language_model.lm_head.": "lm_head."}
IGNORED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
                    "visual.", "model.visual.",  # Qwen2.5-VL's tower: engine/model/vision.py
                    "vision_model.")  # Llama 4's, served text-only
# Projections quantized by a checkpoint: 8-bit (QuantizedLinear) or 4-bit (Int4Linear), read by load_part.
QUANTIZED = (QuantizedLinear, Int4Linear)
# 4-bit tensors' names (engine/model/int4_formats.py), to name experts stored so.
_INT4_EXPERT_TENSOR = re.compile(r".+\.experts\.\d+\.\w+\.(weight_packed|qweight|qzeros|scales|g_idx|weight_g_idx)")
# One expert's projection in a Hub checkpoint -> (our stacked parameter, its half of gate_up or None).
EXPERT_PROJECTIONS = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "down_proj": ("down_proj", None)}
MIXTRAL_EXPERT_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_EXPERT_TENSOR = re.compile(r"(?P<experts>.+\.experts)\.(?P<index>\d+)\.(?P<projection>\w+)\.weight")
# A KV cache scale's name -> which of the layer's (k, v) scales it sets.
KV_SCALE_NAMES = {"k_scale": (0,), "v_scale": (1,), "kv_scale": (0, 1),
                  "k_proj.output_scale": (0,), "v_proj.output_scale": (1,)}
# Phi-3's fused checkpoint projections -> the projections they stack, in order.
FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_FUSED_TENSOR = re.compile(r"(?P<parent>.+\.(self_attn|mlp))\.(?P<fused>qkv_proj|gate_up_proj)\.(?P<leaf>\w+)")
_KV_SCALE_TENSOR = re.compile(r"(?P<attention>.+\.self_attn)\.(?P<scale>" +
                              "|".join(re.escape(n) for n in KV_SCALE_NAMES) + ")")


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
    quantization: QuantScheme | None = None,
    tp: TPGroup = SINGLE,
    mxfp4_experts: bool = False,
) -> CausalLM:
    """`config`: under tensor parallelism, rank `tp.rank`'s share (engine/model/parallel.py), whose
    parts of the checkpoint's tensors are read. `mxfp4_experts`: an MXFP4 checkpoint's experts stay packed
    (engine/model/mxfp4.py) rather than dequantized to `dtype`. A *ForSequenceClassification folder is a
    SequenceClassifier (engine/model/classifier.py)."""
    model_dir = Path(model_dir)
    config = config or ModelConfig.from_dir(model_dir)
    head = classifier_head(model_dir)
    # Build on the meta device and allocate once, uninitialised: every parameter comes from the file.
    with torch.device("meta"):
        model = build_model(config, head, tp)
        if mxfp4_experts:
            pack_experts(model, tp.size)
    model = model.to(dtype)  # floating point only: packed experts keep their uint8
    if quantization is not None:  # after the cast: 8-bit weights and float32 scales keep their dtypes
        quantize_projections(model, quantization, tp.rank, tp.size)
    model = model.to_empty(device=device)
    model.tie_weights()
    if head is not None and head.from_tokens:
        # A causal checkpoint: every tensor but `score`, which lm_head's rows then make.
        load_weights(model, safetensors_files(model_dir), tp, skip={"score.weight"})
        assert isinstance(model, SequenceClassifier)
        model.head_from_tokens(head, token_ids_of(str(model_dir), head.from_tokens))
    else:
        load_weights(model, safetensors_files(model_dir), tp)
    model.setup_rope(device, dtype)
    return model.eval()


def load_weights(model: CausalLM, files: list[Path], tp: TPGroup = SINGLE,
                 skip: frozenset[str] | set[str] = frozenset()) -> None:
    """`skip`: parameters the checkpoint does not hold, made after (a classifier's head from tokens)."""
    params = dict(model.named_parameters())  # tied lm_head shows up once, as embed_tokens
    modules = dict(model.named_modules())
    expected = {key for name in params for key in _expected_keys(name, modules)} - set(skip)
    int4 = {path: module for path, module in modules.items() if isinstance(module, Int4Linear)}
    expected |= {f"{path}.{key}" for path, module in int4.items() for key in module.checkpoint_keys()}
    for module in int4.values():
        module.begin_loading()
    loaded: set[str] = set()
    packed = any(isinstance(module, Mxfp4Experts) for module in modules.values())
    gpt_oss = GptOssTensors(packed) if model.config.model_type == GPT_OSS else None  # its layout, MXFP4 experts
    rename = getattr(model, "checkpoint_name", _our_name)  # a Mamba-2 hybrid's own (engine/model/hybrid.py)
    family_rename = CHECKPOINT_NAMES.get(model.config.model_type)  # GLM-4's norms
    if family_rename is not None:
        rename = lambda name: family_rename(_our_name(name))  # noqa: E731
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if name.endswith(IGNORED_SUFFIXES) or name.startswith(IGNORED_PREFIXES):
                    continue
                if (model.config.mla or model.config.model_type in MTP_FAMILIES) and \
                        _past_last_layer(name, model.config.num_layers):
                    continue  # DeepSeek-V3's and GLM-4.5's multi-token-prediction layers: not served
                if _our_name(name) == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue
                tensor = checkpoint_tensor(name, f.get_tensor(name), model.config.hidden_size)  # Qwen3-VL-MoE's
                parts = split_fused(rename(name), tensor, model.config, tp.size)
                if gpt_oss is not None:
                    parts = [part for n, t in parts for part in gpt_oss.convert(n, t)]
                for our_name, tensor in parts:
                    if not isinstance(_projection_module(our_name, modules), Int4Linear):  # it cuts its own share
                        tensor = shard_tensor(our_name, tensor, tp)
                    loaded.update(_load_one(our_name, tensor, params, modules))
    if gpt_oss is not None:
        gpt_oss.finish()
    missing = expected - loaded
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
    for module in int4.values():
        module.finish_loading()


def split_fused(name: str, tensor: torch.Tensor, config: ModelConfig, tp_size: int = 1) -> list[tuple[str, torch.Tensor]]:
    """A fused q/k/v or gate/up checkpoint tensor as its parts' (name, tensor); any other as itself. `config`
    is a rank's share, so the whole tensor's parts are `tp_size` times its sizes. One scale for the whole
    fused tensor is each part's."""
    match = _FUSED_TENSOR.fullmatch(name)
    if match is None:
        return [(name, tensor)]
    parts, leaf = FUSED_PROJECTIONS[match["fused"]], match["leaf"]
    q, kv, inter = (tp_size * n for n in (config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim,
                                           config.intermediate_size))
    sizes = [q, kv, kv] if match["fused"] == "qkv_proj" else [inter, inter]
    names = [f"{match['parent']}.{part}.{leaf}" for part in parts]
    if leaf in ("input_scale", "weight_scale") and tensor.numel() == 1:
        return [(part, tensor) for part in names]
    if leaf not in ("weight", "bias", "weight_scale") or tensor.shape[0] != sum(sizes):
        raise ValueError(f"{name}: a fused projection's {leaf} of shape {tuple(tensor.shape)} cannot be split into "
                         f"{', '.join(parts)} ({sizes} rows): 4-bit fused projections are not supported")
    return list(zip(names, tensor.split(sizes), strict=True))


def _expected_keys(param_name: str, modules: dict) -> list[str]:
    """A plain parameter is one key; a packed one is one key per checkpoint shard, `name:shard`; a
    stacked expert parameter one per expert (and half), `name:expert[:half]`."""
    module_path, _, leaf = param_name.rpartition(".")
    module = modules[module_path]
    if isinstance(module, PackedLinear):
        return [f"{param_name}:{shard}" for shard in range(len(module.output_sizes))]
    if isinstance(module, QuantizedLinear):
        return module.checkpoint_keys(param_name)
    if isinstance(module, Experts):
        halves = (":0", ":1") if leaf == "gate_up_proj" else ("",)
        return [f"{param_name}:{e}{half}" for e in range(len(getattr(module, leaf))) for half in halves]
    return [param_name]


def _projection_module(name: str, modules: dict) -> object:
    """The module of ours that checkpoint tensor `name` belongs to, a packed one for q/k/v and gate/up."""
    module_path = name.rpartition(".")[0]
    parent, _, projection = module_path.rpartition(".")
    if projection in PACKED_PROJECTIONS:
        return modules.get(f"{parent}.{packed_name_of(projection)}")
    return modules.get(module_path)


def _our_name(name: str) -> str:
    """Mixtral's names for the MoE block and its expert projections, as Qwen3-MoE's; Qwen2-MoE's `shared_expert`
    as DeepSeek's `shared_experts`; a multimodal folder's language model's, as a text model's."""
    for prefix, ours in LANGUAGE_MODEL_PREFIXES.items():
        if name.startswith(prefix):
            name = ours + name.removeprefix(prefix)
    name = name.replace(".block_sparse_moe.", ".mlp.").replace(".mlp.shared_expert.", ".mlp.shared_experts.")
    parts = name.split(".")
    if len(parts) > 2 and parts[-3].isdigit() and parts[-2] in MIXTRAL_EXPERT_NAMES:
        parts[-2] = MIXTRAL_EXPERT_NAMES[parts[-2]]
    return ".".join(parts)


def _load_one(name: str, tensor: torch.Tensor, params: dict, modules: dict) -> list[str]:
    """Copies one checkpoint tensor into place and returns the keys (see `_expected_keys`) it filled."""
    kv_scale = _KV_SCALE_TENSOR.fullmatch(name)
    if kv_scale:
        _load_kv_scale(modules, kv_scale["attention"], KV_SCALE_NAMES[kv_scale["scale"]], tensor)
        return []
    if _INT4_EXPERT_TENSOR.fullmatch(name):
        raise ValueError(f"{name} is a 4-bit MoE expert tensor: this engine keeps experts in the model's dtype "
                         "and serves 4-bit weights only in the attention and dense MLP projections")
    expert = _EXPERT_TENSOR.fullmatch(name)
    if expert and expert["projection"] in EXPERT_PROJECTIONS:
        return [_load_expert(expert["experts"], int(expert["index"]), expert["projection"], tensor, modules)]
    if isinstance(modules.get(name.rpartition(".")[0]), Experts) and name in params:
        _copy(name, params[name].data, tensor)  # already stacked, as transformers 5 may save it
        return _expected_keys(name, modules)
    module_path, _, leaf = name.rpartition(".")
    parent, _, projection = module_path.rpartition(".")
    if isinstance(modules.get(module_path), QUANTIZED):
        return [f"{module_path}.{key}" for key in modules[module_path].load_part(leaf, 0, tensor)]
    if projection in PACKED_PROJECTIONS and f"{parent}.{packed_name_of(projection)}" in modules:
        packed_name, shard = PACKED_PROJECTIONS[projection]
        target = f"{parent}.{packed_name}.{leaf}"
        module = modules[f"{parent}.{packed_name}"]
        if isinstance(module, QUANTIZED):
            return [f"{parent}.{packed_name}.{key}" for key in module.load_part(leaf, shard, tensor)]
        assert isinstance(module, PackedLinear)
        if target not in params:
            raise ValueError(f"unexpected checkpoint tensor {name!r}")
        _refuse_quantized(name, params[target], tensor)
        module.load_shard(params[target], shard, tensor)
        return [f"{target}:{shard}"]
    if name not in params:
        raise ValueError(f"unexpected checkpoint tensor {name!r}")
    _copy(name, params[name].data, tensor)
    return [name]


def _load_kv_scale(modules: dict, attention_path: str, which: tuple[int, ...], tensor: torch.Tensor) -> None:
    attention = modules.get(attention_path)
    if not isinstance(attention, Attention) or tensor.numel() != 1:
        raise ValueError(f"unexpected KV cache scale {attention_path}: shape {tuple(tensor.shape)}")
    value = float(tensor.float())
    if not value > 0:
        raise ValueError(f"{attention_path}: a KV cache scale must be positive (got {value})")
    scales = list(attention.kv_scales)
    for i in which:
        scales[i] = value
    attention.kv_scales = (scales[0], scales[1])


def _load_expert(experts_path: str, index: int, projection: str, tensor: torch.Tensor, modules: dict) -> str:
    experts = modules.get(experts_path)
    if not isinstance(experts, Experts):
        raise ValueError(f"unexpected checkpoint tensor {experts_path}.{index}.{projection}.weight")
    leaf, half = EXPERT_PROJECTIONS[projection]
    stacked = getattr(experts, leaf).data
    if index >= len(stacked):
        raise ValueError(f"{experts_path}: expert {index} of {len(stacked)}")
    target = stacked[index]
    if half is not None:
        target = target.narrow(0, half * experts.intermediate_size, experts.intermediate_size)
    _copy(f"{experts_path}.{index}.{projection}.weight", target, tensor)
    return f"{experts_path}.{leaf}:{index}" + (f":{half}" if half is not None else "")


def _past_last_layer(name: str, num_layers: int) -> bool:
    parts = name.split(".")
    return len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and int(parts[2]) >= num_layers


def packed_name_of(projection: str) -> str:
    return PACKED_PROJECTIONS[projection][0]


def _refuse_quantized(name: str, target: torch.Tensor, tensor: torch.Tensor) -> None:
    if tensor.dtype.itemsize == 1 and target.dtype.itemsize != 1:
        raise ValueError(f"{name} is stored quantized ({tensor.dtype}): this engine serves 8-bit weights only "
                         "in the attention and dense MLP projections, with the checkpoint's quantization_config")


def _copy(name: str, target: torch.Tensor, tensor: torch.Tensor) -> None:
    _refuse_quantized(name, target, tensor)
    if target.shape != tensor.shape:
        raise ValueError(f"{name}: expected shape {tuple(target.shape)}, got {tuple(tensor.shape)}")
    target.copy_(tensor)
