"""An EAGLE-3 draft head (Li et al. 2025; yuhuili/EAGLE3-LLaMA3.1-Instruct-8B, the Qwen3 and gpt-oss heads,
RedHat's speculators format) and how it is read from its folder; engine/eagle3.py drafts with it.

What differs from EAGLE-1/2 (engine/eagle_head.py), as in the paper's code and vLLM's `llama_eagle3.py`:
- its features are three of the target's layers' inputs (the residual stream before each of the layers
  `aux_layer_ids`: low, middle and high), concatenated and projected by `fc` (3 hidden -> hidden); a draft
  row past the target's reads instead the head's own output at the row before, before its final norm;
- its one decoder layer attends over [input_layernorm(embed(token)) ; hidden_norm(feature)], 2 hidden wide
  into q/k/v, the feature (un-normed) being the residual (speculators' `norm_before_residual`: the normed one);
- it has its own final norm and lm_head over a reduced draft vocabulary of `draft_vocab_size` ids, draft id d
  being target id d + d2t[d] (the checkpoint's `d2t`; `t2d` marks the same ids over the target's vocabulary).
Logits over the target's vocabulary put the draft ids' logits at their target ids and -inf elsewhere, so the
drafter samples (and the rejection sampler reads q) over the target's ids. The embedding table is the
target's unless the head has one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.eagle_head import layer_state, read_head_weights
from engine.model.attention import AttentionPlan
from engine.model.config import ModelConfig
from engine.model.layers import PackedLinear, RMSNorm
from engine.model.llama import DecoderLayer
from engine.model.rope import RotaryEmbedding

if TYPE_CHECKING:
    from engine.torch_runner import TorchModelRunner

# The config.json architectures of EAGLE-3 heads: EAGLE's own, vLLM's name for it, RedHat speculators'.
EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEigen3", "Eagle3LlamaForCausalLM", "Eagle3Speculator")
INDEX_TENSORS = ("d2t", "t2d")  # integer / bool tensors: kept off the target's dtype


def default_aux_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """vLLM's (and EAGLE-3's training code's) low, middle and high layers when the head names none."""
    return (2, num_layers // 2, num_layers - 3)


@dataclass(frozen=True)
class Eagle3Layout:
    """What a head's config.json says beyond its layer's Llama config."""

    config: ModelConfig  # the decoder layer's
    draft_vocab_size: int
    aux_layer_ids: tuple[int, ...]
    norm_before_residual: bool


def read_eagle3_config(folder: Path, target_config: ModelConfig) -> Eagle3Layout:
    """The head's layout for a target of `target_config`; ValueError, saying why, for what it cannot draft."""
    if not (folder / "config.json").is_file():
        raise ValueError(f"EAGLE-3 head {str(folder)!r} is not a model folder (no config.json)")
    raw = json.loads((folder / "config.json").read_text())
    architectures = raw.get("architectures") or []
    if not any(a in EAGLE3_ARCHITECTURES for a in architectures):
        raise ValueError(f"EAGLE-3 head {folder}: architectures {architectures} is none of "
                         f"{', '.join(EAGLE3_ARCHITECTURES)} (an EAGLE-1/2 head drafts with method 'eagle')")
    if "speculators_model_type" in raw and raw["speculators_model_type"] != "eagle3":
        raise ValueError(f"EAGLE-3 head {folder}: speculators_model_type {raw['speculators_model_type']!r} "
                         "is not 'eagle3'")
    layer_raw = dict(raw.get("transformer_layer_config") or raw)  # speculators' nests the layer's config
    if layer_raw.get("model_type", "llama") != "llama":
        raise ValueError(f"EAGLE-3 head {folder}: its layer is a {layer_raw['model_type']!r} layer; only Llama "
                         "layers are supported (every published EAGLE-3 head's)")
    config = ModelConfig.from_dict(layer_raw | {"num_hidden_layers": 1, "model_type": "llama"})
    target_hidden = raw.get("target_hidden_size") or config.hidden_size
    for name, ours, theirs in (("hidden_size", config.hidden_size, target_config.hidden_size),
                               ("target_hidden_size", target_hidden, target_config.hidden_size),
                               ("vocab_size", config.vocab_size, target_config.vocab_size)):
        if ours != theirs:
            raise ValueError(f"the EAGLE-3 head's {name} ({ours}) is not the target's ({theirs}): "
                             "it was trained for another model (or is a head of another width: not supported)")
    extra = raw.get("eagle_config") or {}
    ids = extra.get("eagle_aux_hidden_state_layer_ids", raw.get("eagle_aux_hidden_state_layer_ids"))
    aux = tuple(ids) if ids is not None else default_aux_layer_ids(target_config.num_layers)
    if len(aux) != 3 or not all(0 <= i < target_config.num_layers for i in aux):
        raise ValueError(f"EAGLE-3 head {folder}: auxiliary layer ids {list(aux)} are not three of the target's "
                         f"{target_config.num_layers} layers")
    draft_vocab = int(raw.get("draft_vocab_size") or config.vocab_size)
    if not 0 < draft_vocab <= config.vocab_size:
        raise ValueError(f"EAGLE-3 head {folder}: draft_vocab_size {draft_vocab} is not within the target's "
                         f"vocabulary ({config.vocab_size})")
    return Eagle3Layout(config, draft_vocab, aux, bool(raw.get("norm_before_residual", False)))


def read_eagle3_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The head's tensors by speculators' names: EAGLE's `midlayer.` read as `layers.0.`."""
    return {name.replace("midlayer.", "layers.0."): t for name, t in read_head_weights(folder).items()}


def check_eagle3_weights(weights: dict[str, torch.Tensor], layout: Eagle3Layout) -> None:
    """ValueError where a tensor is missing or shaped for another head."""
    hidden, vocab, draft = layout.config.hidden_size, layout.config.vocab_size, layout.draft_vocab_size
    q_rows = layout.config.num_heads * layout.config.head_dim
    expected = {"fc.weight": (hidden, 3 * hidden), "norm.weight": (hidden,),
                "layers.0.hidden_norm.weight": (hidden,), "layers.0.input_layernorm.weight": (hidden,),
                "layers.0.self_attn.q_proj.weight": (q_rows, 2 * hidden)}
    optional = {"lm_head.weight": (draft, hidden), "embed_tokens.weight": (vocab, hidden), "d2t": (draft,),
                "t2d": (vocab,)}
    for name in expected:
        if name not in weights:
            raise ValueError(f"the EAGLE-3 head has no {name} (is this an EAGLE-3 checkpoint?)")
    for name, shape in (expected | optional).items():
        if name in weights and tuple(weights[name].shape) != shape:
            raise ValueError(f"the EAGLE-3 head's {name} is {tuple(weights[name].shape)}, not {shape}: "
                             "it does not fit this target")
    if draft < vocab and ("d2t" not in weights or "lm_head.weight" not in weights):
        raise ValueError(f"the EAGLE-3 head drafts over {draft} of the target's {vocab} ids but has no "
                         f"{'d2t' if 'd2t' not in weights else 'lm_head.weight'} to map them back")
    if "d2t" in weights:
        ids = torch.arange(draft) + weights["d2t"].long()
        if ids.min() < 0 or ids.max() >= vocab or len(set(ids.tolist())) != draft:
            raise ValueError("the EAGLE-3 head's d2t maps its draft ids outside the target's vocabulary or "
                             "two to one id")
        if "t2d" in weights and not torch.equal(weights["t2d"].bool().nonzero().flatten(), ids.sort().values):
            raise ValueError("the EAGLE-3 head's t2d does not mark the ids its d2t maps to")


class Eagle3Head(nn.Module):
    """fc over the three features, the 2-hidden-wide decoder layer, the final norm and the draft lm_head."""

    checkpoint_buffers = ("own_embed", "draft_to_target")  # its weights: a level 2 sleep drops them

    def __init__(self, layout: Eagle3Layout, target: TorchModelRunner, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        config = self.config = layout.config
        hidden, draft = config.hidden_size, layout.draft_vocab_size
        self.target, self.layout = target, layout
        self.fc = nn.Linear(3 * hidden, hidden, bias="fc.bias" in weights)
        self.layer = DecoderLayer(config, 0)
        q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.layer.self_attn.qkv_proj = PackedLinear(2 * hidden, [q, kv, kv], bias=config.qkv_bias)
        self.hidden_norm = RMSNorm(hidden, config.rms_norm_eps)
        self.norm = RMSNorm(hidden, config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, draft, bias=False)
        self.own_embed: torch.Tensor | None
        self.register_buffer("own_embed", weights.get("embed_tokens.weight"), persistent=False)
        self.draft_to_target: torch.Tensor
        self.register_buffer("draft_to_target", torch.arange(draft), persistent=False)
        self.load_weights(weights)
        self.rope: RotaryEmbedding | None = None

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """The checkpoint's values copied into the head's tensors (at load, and after a level 2 sleep)."""
        self.fc.load_state_dict({k.removeprefix("fc."): v for k, v in weights.items() if k.startswith("fc.")})
        state = layer_state(weights, self.config) | {"input_layernorm.weight": weights["layers.0.input_layernorm.weight"]}
        self.layer.load_state_dict(state)
        self.hidden_norm.weight.data.copy_(weights["layers.0.hidden_norm.weight"])
        self.norm.weight.data.copy_(weights["norm.weight"])
        head = weights.get("lm_head.weight", self.target.model.lm_head.weight)  # a full-vocabulary head may share
        self.lm_head.weight.data.copy_(head)
        if self.own_embed is not None:
            self.own_embed.copy_(weights["embed_tokens.weight"])
        offsets = weights.get("d2t")
        self.draft_to_target.copy_(torch.arange(len(self.draft_to_target), device=self.draft_to_target.device)
                                   + (0 if offsets is None else offsets.long()))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.own_embed if self.own_embed is not None else self.target.model.model.embed_tokens.weight
        return nn.functional.embedding(input_ids, table)

    def combine(self, aux: torch.Tensor) -> torch.Tensor:
        """[T, 3 hidden] target layers' inputs -> [T, hidden] features (vLLM's `combine_hidden_states`)."""
        return self.fc(aux)

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                kv_cache: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        """The layer's output before the final norm (what a later draft row reads as its feature)."""
        assert self.rope is not None
        normed = self.hidden_norm(features)
        residual = normed if self.layout.norm_before_residual else features
        attn_input = torch.cat([self.layer.input_layernorm(self.embed(input_ids)), normed], dim=-1)
        hidden = residual + self.layer.self_attn(attn_input, positions, self.rope, kv_cache, plan)
        return hidden + self.layer.mlp(self.layer.post_attention_layernorm(hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits over the target's vocabulary: the draft ids' at their target ids, -inf elsewhere."""
        draft = self.lm_head(self.norm(hidden)).float()
        full = draft.new_full((hidden.shape[0], self.config.vocab_size), float("-inf"))
        return full.index_copy_(1, self.draft_to_target, draft)


def load_eagle3_head(folder: Path, target: TorchModelRunner) -> Eagle3Head:
    """The head in `folder` for `target`, on its device and dtype; ValueError, saying why, where it cannot
    draft for it."""
    if target.tensor_parallel_size > 1:
        raise ValueError("an EAGLE-3 head drafts for a target on one rank: its features are split over several here")
    layout = read_eagle3_config(folder, target.full_config)
    weights = read_eagle3_weights(folder)
    check_eagle3_weights(weights, layout)
    with torch.device(target.device):
        head = Eagle3Head(layout, target, eagle3_on_target(weights, target)).to(target.dtype)
    head.rope = RotaryEmbedding(layout.config, target.device, target.dtype)
    return head.eval()


def eagle3_on_target(weights: dict[str, torch.Tensor], target: TorchModelRunner) -> dict[str, torch.Tensor]:
    """On the target's device; its dtype for all but the index tensors."""
    return {name: t.to(target.device) if name in INDEX_TENSORS else t.to(target.device, target.dtype)
            for name, t in weights.items()}
