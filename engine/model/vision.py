"""LLaVA's image side (LlavaForConditionalGeneration): a CLIP or SigLIP vision tower, run with transformers'
own module built from the checkpoint's `vision_config`, the hidden states of `vision_feature_layer` (a list:
theirs concatenated) with the CLS position dropped under the "default" `vision_feature_select_strategy`, and
the two-layer GELU `multi_modal_projector` into the language model's width, as transformers computes
`get_image_features`. Its tensors are read from the same safetensors files as the language model's, in
transformers 5's layout (`model.vision_tower.*`, `model.multi_modal_projector.*`) or the older one
(`vision_tower.*`, `multi_modal_projector.*`).

Gemma 3's (Gemma3ForConditionalGeneration, `model_type: gemma3`): a SigLIP tower's last hidden state (after its
post-layernorm), then transformers' own `Gemma3MultiModalProjector` (the patch grid average-pooled to
`mm_tokens_per_image` tokens, Gemma's (1 + weight) RMSNorm, one projection matrix). Its image tokens attend to
each other both ways (`bidirectional`: engine/model/attention.py), and its processor widens an image in the
prompt's text, not its tokens (`text_expansion`).

Qwen2.5-VL's (Qwen2_5_VLForConditionalGeneration, `model_type: qwen2_5_vl`): transformers' own
`Qwen2_5_VisionTransformerPretrainedModel` from `vision_config` (window attention, 2D rotary, the patch merger),
its `visual.*` / `model.visual.*` tensors; dynamic resolution, so an image is its own number of tokens
(grid_t * grid_h * grid_w / merge_size**2, `tokens_per_image` 0) and its pixels a [patches, patch] matrix with its
grid (`ImageInput.grid_thw`); the language model's positions are M-RoPE's (engine/rope_positions.py).

Qwen3-VL's and Qwen3-VL-MoE's (`qwen3_vl`, `qwen3_vl_moe`): transformers' own `Qwen3VLVisionModel`, the same dynamic
resolution and M-RoPE positions, each token's features followed by its DeepStack features (engine/model/qwen3_vl.py).

Sharded or quantized, as vLLM serves them: only the language model is; the encoder stays whole, in the model's
dtype, on tensor-parallel rank 0 alone (its features travel with each step: engine/tp_workers.py), and a
checkpoint that quantized it is refused."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from torch import nn

from engine.image_token_counts import llava_tokens_per_image
from engine.model.families import GEMMA3_MULTIMODAL, LLAVA, QWEN2_5_VL, UnsupportedConfig
from engine.model.qwen3_vl_config import QWEN3_VL, QWEN3_VL_MOE, QWEN3_VL_TYPES

if TYPE_CHECKING:
    from engine.image_inputs import ImageInput

VISION_MODEL_TYPES = ("clip_vision_model", "siglip_vision_model")
SELECT_STRATEGIES = ("default", "full")
_PREFIXES = {"model.vision_tower.": "vision_tower.", "vision_tower.": "vision_tower.",
             "model.multi_modal_projector.": "multi_modal_projector.",
             "multi_modal_projector.": "multi_modal_projector.", "model.visual.": "visual.", "visual.": "visual."}
# Tower outputs LLaVA never reads (it takes a layer's hidden states): checkpoints may leave them out. Gemma 3
# reads the post-layernorm's output (its last hidden state), never SigLIP's pooling head.
_UNUSED = {LLAVA: ("vision_tower.vision_model.post_layernorm.", "vision_tower.vision_model.head."),
           GEMMA3_MULTIMODAL: ("vision_tower.vision_model.head.",), QWEN2_5_VL: (), QWEN3_VL: (),
           QWEN3_VL_MOE: ()}
# Tensors only a quantized Linear has (compressed-tensors, fp8, AWQ, GPTQ): the tower and projector are
# served unquantized, in the model's dtype, whatever the language model is (as vLLM serves them).
_QUANTIZED_LEAVES = ("weight_scale", "input_scale", "weight_packed", "weight_zero_point", "weight_g_idx", "qweight",
                     "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class VisionConfig:
    """What the engine needs of a LLaVA config: the image token, how many feature tokens an image becomes
    (LlavaProcessor's count: one a patch, plus CLIP's CLS under "full"), and how to build the encoder."""

    image_token_id: int
    tokens_per_image: int
    image_size: int
    feature_layer: int | tuple[int, ...]
    select_strategy: str
    vision: dict  # the checkpoint's vision_config
    text_hidden_size: int
    projector_act: str = "gelu"
    projector_bias: bool = True
    family: str = LLAVA
    # Gemma 3: the template's image placeholder (its begin-of-image token) and the end-of-image token.
    boi_token_id: int | None = None
    eoi_token_id: int | None = None
    bidirectional: bool = False  # an image's tokens see each other both ways (Gemma 3)
    raw: dict | None = None  # the whole config, where transformers' projector is built from it
    merge_size: int = 2  # Qwen2.5-VL: patches merged a side into one token (and one M-RoPE grid step)

    @property
    def dynamic_resolution(self) -> bool:
        """An image's token count depends on its size (Qwen2.5-VL): known only once it is preprocessed."""
        return self.family in (QWEN2_5_VL, *QWEN3_VL_TYPES)

    @property
    def text_expansion(self) -> bool:
        """Whether the processor widens images in the prompt's text (Gemma 3) rather than its tokens (LLaVA)."""
        return self.boi_token_id is not None

    def check_chunk(self, chunk_tokens: int) -> None:
        """A bidirectional image is prefilled in one chunk: refused at start-up where a step cannot hold one
        (as vLLM refuses it), rather than a request that could never run."""
        if self.bidirectional and chunk_tokens < self.tokens_per_image:
            raise ValueError(f"this model's images ({self.tokens_per_image} tokens each) attend to themselves both "
                             f"ways and are prefilled in one chunk: max_num_batched_tokens and "
                             f"long_prefill_token_threshold must be at least {self.tokens_per_image} "
                             f"(the smaller is {chunk_tokens})")

    @classmethod
    def from_dict(cls, raw: dict) -> VisionConfig | None:
        """None for a text-only model."""
        if raw.get("model_type") == GEMMA3_MULTIMODAL:
            return cls._gemma3(raw)
        if raw.get("model_type") in (QWEN2_5_VL, *QWEN3_VL_TYPES):
            config = _qwen_config(raw)
            vision = config.vision_config.to_dict()
            return cls(image_token_id=int(config.image_token_id), tokens_per_image=0, image_size=0, feature_layer=-1,
                       select_strategy="full", vision=vision, text_hidden_size=int(config.text_config.hidden_size),
                       family=raw["model_type"], raw=raw, merge_size=int(vision["spatial_merge_size"]))
        if raw.get("model_type") != LLAVA:
            return None
        vision = dict(raw.get("vision_config") or {"model_type": "clip_vision_model"})
        vision.setdefault("model_type", "clip_vision_model")
        if vision["model_type"] not in VISION_MODEL_TYPES:
            raise UnsupportedConfig(f"unsupported vision tower {vision['model_type']!r}; expected one of "
                                    f"{VISION_MODEL_TYPES}")
        strategy = raw.get("vision_feature_select_strategy", "default")
        if strategy not in SELECT_STRATEGIES:
            raise UnsupportedConfig(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}")
        layer = raw.get("vision_feature_layer", -2)
        text = raw.get("text_config") or {}
        token = raw.get("image_token_id", raw.get("image_token_index", 32_000))
        return cls(image_token_id=int(token), tokens_per_image=llava_tokens_per_image(vision, strategy),
                   image_size=vision.get("image_size", 224),
                   feature_layer=layer if isinstance(layer, int) else tuple(layer),
                   select_strategy=strategy, vision=vision, text_hidden_size=int(text.get("hidden_size", 4096)),
                   projector_act=raw.get("projector_hidden_act", "gelu"),
                   projector_bias=bool(raw.get("multimodal_projector_bias", True)))

    @classmethod
    def _gemma3(cls, raw: dict) -> VisionConfig:
        """transformers' Gemma3Config defaults where the folder leaves a field out."""
        from transformers import Gemma3Config

        config = Gemma3Config.from_dict(raw)
        vision = config.vision_config.to_dict()
        if vision.get("model_type") != "siglip_vision_model":
            raise UnsupportedConfig(f"unsupported Gemma 3 vision tower {vision.get('model_type')!r}")
        tokens = int(config.mm_tokens_per_image)
        side, patches = math.isqrt(tokens), vision["image_size"] // vision["patch_size"]
        if side * side != tokens or patches % side:
            raise UnsupportedConfig(f"mm_tokens_per_image {tokens} must be a square whose side divides the "
                                    f"{patches} patches of an image's side")

        def token(name: str) -> int:
            return int(raw[f"{name}_id"] if raw.get(f"{name}_id") is not None else getattr(config, f"{name}_index"))

        return cls(image_token_id=token("image_token"), tokens_per_image=tokens, image_size=vision["image_size"],
                   feature_layer=-1, select_strategy="full", vision=vision,
                   text_hidden_size=int(config.text_config.hidden_size), family=GEMMA3_MULTIMODAL,
                   boi_token_id=token("boi_token"), eoi_token_id=token("eoi_token"), bidirectional=True, raw=raw)


class Projector(nn.Module):
    """LlavaMultiModalProjector: linear, activation, linear (its parameter names)."""

    def __init__(self, config: VisionConfig) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        layers = 1 if isinstance(config.feature_layer, int) else len(config.feature_layer)
        width = config.vision.get("hidden_size", 768) * layers
        self.linear_1 = nn.Linear(width, config.text_hidden_size, bias=config.projector_bias)
        self.act = ACT2FN[config.projector_act]
        self.linear_2 = nn.Linear(config.text_hidden_size, config.text_hidden_size, bias=config.projector_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class VisionEncoder(nn.Module):
    """forward(pixel_values [images, 3, H, W]) -> features [images, tokens_per_image, text hidden size]."""

    def __init__(self, config: VisionConfig) -> None:
        import transformers as hf

        super().__init__()
        self.config = config
        if config.family == QWEN2_5_VL:
            from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

            tower = hf.Qwen2_5_VLConfig.from_dict(config.raw).vision_config
            self.visual = qwen.Qwen2_5_VisionTransformerPretrainedModel._from_config(tower)
            return
        if config.family in QWEN3_VL_TYPES:
            model = hf.Qwen3VLMoeVisionModel if config.family == QWEN3_VL_MOE else hf.Qwen3VLVisionModel
            self.visual = model._from_config(_qwen_config(config.raw or {}).vision_config)
            return
        siglip = config.vision["model_type"] == "siglip_vision_model"
        tower_config = (hf.SiglipVisionConfig if siglip else hf.CLIPVisionConfig).from_dict(config.vision)
        self.vision_tower = (hf.SiglipVisionModel if siglip else hf.CLIPVisionModel)(tower_config)
        if config.family == GEMMA3_MULTIMODAL:
            from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

            self.multi_modal_projector: nn.Module = Gemma3MultiModalProjector(hf.Gemma3Config.from_dict(config.raw))
        else:
            self.multi_modal_projector = Projector(config)

    def encode(self, images: list[ImageInput], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        """Each image's features [its tokens, text hidden size]."""
        if not self.config.dynamic_resolution:
            return list(self(torch.stack([image.pixel_values for image in images]).to(device, dtype)))
        # Qwen2_5_VLModel.get_image_features: the images' patches in one sequence, split by their grids
        pixels = torch.cat([image.pixel_values for image in images]).to(device, dtype)
        grids = torch.tensor([image.grid_thw for image in images], device=device)
        output = self.visual(pixels, grid_thw=grids)
        # Qwen3-VL: each token's DeepStack features after its own (engine/model/qwen3_vl.py)
        features = torch.cat([output.pooler_output, *(getattr(output, "deepstack_features", None) or ())], dim=-1)
        return list(features.split([image.length for image in images]))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.config.family == GEMMA3_MULTIMODAL:  # Gemma3Model.get_image_features
            return self.multi_modal_projector(self.vision_tower(pixel_values).last_hidden_state)
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        layers = self.config.feature_layer
        pool = [hidden[layers]] if isinstance(layers, int) else [hidden[i] for i in layers]
        if self.config.select_strategy == "default":
            pool = [h[:, 1:] for h in pool]
        return self.multi_modal_projector(torch.cat(pool, dim=-1))


def _qwen_config(raw: dict):  # noqa: ANN202 - a transformers config
    import transformers as hf

    kind = {QWEN2_5_VL: hf.Qwen2_5_VLConfig, QWEN3_VL: hf.Qwen3VLConfig, QWEN3_VL_MOE: hf.Qwen3VLMoeConfig}
    return kind[raw["model_type"]].from_dict(raw)


def load_vision_encoder(config: VisionConfig, files: list[Path], device: torch.device,
                        dtype: torch.dtype) -> VisionEncoder:
    """The encoder with the checkpoint's tower and projector tensors (either layout); a missing one is an error,
    but for the tower's outputs the model does not read."""
    encoder = VisionEncoder(config)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
                if prefix is not None:
                    state[_PREFIXES[prefix] + name.removeprefix(prefix)] = f.get_tensor(name)
    quantized = sorted(name for name in state if name.rsplit(".", 1)[-1] in _QUANTIZED_LEAVES)
    if quantized:  # vLLM's quantized multimodal checkpoints leave the tower out (`ignore`): so do we
        raise ValueError(f"this checkpoint quantized its vision tower or projector ({quantized[0]}): the engine "
                         "serves them only in the model's dtype (quantize the language model only)")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith(_UNUSED[config.family])]
    if missing or unexpected:
        raise ValueError(f"the checkpoint's vision tower does not match its vision_config: missing "
                         f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return encoder.to(device=device, dtype=dtype).eval()
