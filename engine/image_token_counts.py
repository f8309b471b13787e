"""How many prompt tokens an image becomes on Pitstop's vision models, from the checkpoint's config files alone
(no torch, no transformers: the gateway estimates with it, gateway/image_tokens.py). LLaVA: one token a patch of
its square input, plus CLIP's CLS under "full" (LlavaProcessor's count, engine/model/vision.py); Gemma 3:
`mm_tokens_per_image`; Qwen2.5-VL: its processor's `smart_resize` of the actual pixels to multiples of patch x
merge within [min_pixels, max_pixels], one token a merged patch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from engine.model.families import GEMMA3_MULTIMODAL, LLAVA, QWEN2_5_VL
from engine.model.qwen3_vl_config import QWEN3_VL_TYPES

GEMMA3_TOKENS_PER_IMAGE = 256  # transformers' Gemma3Config default
# Qwen2VLImageProcessor's defaults: 14-pixel patches merged 2 x 2, between 56 x 56 and 28 x 28 x 1280 pixels.
QWEN_PATCH, QWEN_MERGE, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 14, 2, 56 * 56, 28 * 28 * 1280


def llava_tokens_per_image(vision: dict, select_strategy: str) -> int:
    """LLaVA's feature tokens an image: its patches, CLIP's CLS kept under "full" (dropped under "default")."""
    image_size, patch = vision.get("image_size", 224), vision.get("patch_size", 32)
    has_cls = vision.get("model_type", "clip_vision_model") == "clip_vision_model"
    return (image_size // patch) ** 2 + has_cls - (select_strategy == "default")


@dataclass(frozen=True)
class QwenResize:
    """Qwen2-VL's image processor's `smart_resize`, counted in merged patches."""

    patch: int = QWEN_PATCH
    merge: int = QWEN_MERGE
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS

    def tokens(self, width: int, height: int) -> int:
        factor = self.patch * self.merge
        h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
        return (h_bar // factor) * (w_bar // factor)

    @classmethod
    def of_folder(cls, raw: dict, preprocessor: dict) -> QwenResize:
        vision = raw.get("vision_config") or {}
        size = preprocessor.get("size") or {}
        return cls(patch=int(preprocessor.get("patch_size", vision.get("patch_size", QWEN_PATCH))),
                   merge=int(preprocessor.get("merge_size", vision.get("spatial_merge_size", QWEN_MERGE))),
                   min_pixels=int(preprocessor.get("min_pixels", size.get("shortest_edge", QWEN_MIN_PIXELS))),
                   max_pixels=int(preprocessor.get("max_pixels", size.get("longest_edge", QWEN_MAX_PIXELS))))


def folder_image_tokens(model_dir: Path) -> int | QwenResize | None:
    """A model folder's tokens an image: a count (LLaVA, Gemma 3), Qwen2.5-VL's resize rule, or None (text only)."""
    raw = json.loads((model_dir / "config.json").read_text())
    model_type = raw.get("model_type")
    if model_type == LLAVA:
        vision = dict(raw.get("vision_config") or {})
        return llava_tokens_per_image(vision, raw.get("vision_feature_select_strategy", "default"))
    if model_type == GEMMA3_MULTIMODAL:
        return int(raw.get("mm_tokens_per_image", GEMMA3_TOKENS_PER_IMAGE))
    if model_type in (QWEN2_5_VL, *QWEN3_VL_TYPES):  # Qwen3-VL: the same rule, 16-pixel patches in its folders
        path = model_dir / "preprocessor_config.json"
        return QwenResize.of_folder(raw, json.loads(path.read_text()) if path.is_file() else {})
    return None
