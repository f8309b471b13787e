"""How many prompt tokens an image part is on a deployment: each deployment's estimator, chosen once from its
provider string and model (or its `model_info.image_token_estimate`), applied to the part's size and detail
(gateway/image_size.py). The providers' published rules:

- OpenAI (openai/, azure/, and gpt-* / o* / chatgpt-* names elsewhere): tile models (gpt-4o, gpt-4.1, o1, o3,
  gpt-5, ...) fit the image in 2048 x 2048, then its shortest side to 768, and count `tile` tokens a 512-pixel
  tile plus `base` (85 and 170 for gpt-4o; gpt-4o-mini 2833 and 5667); detail "low" is `base` alone. Patch
  models (gpt-4.1-mini and -nano, o4-mini) count 32-pixel patches, the image shrunk to fit 1536 of them, times
  the model's multiplier; detail does not change them.
- Anthropic (any provider's claude-*: anthropic/, bedrock/, vertex_ai/): 28-pixel patches, ceil(w / 28) x
  ceil(h / 28), the image first shrunk (aspect kept) to a long edge of 1568 and 1568 patches (Opus 4.7 and later:
  2576 and 4784).
- Gemini 2 (gemini-1.x / 2.x): 258 tokens a 768-pixel tile, so 258 an image up to 768 on a side.
- Gemini 3 and later: a fixed count a media resolution, whatever the size: the part's `detail` is its level as
  litellm maps it (low 280, medium 560, high 1,120, ultra_high 2,240); unset ("auto"), Google's default for
  images, high.
- Pitstop's engines in this process: what the checkpoint says (engine/image_token_counts.py): LLaVA's patches,
  Gemma 3's `mm_tokens_per_image`, Qwen2.5-VL's smart_resize of the actual pixels.
- Anything else (an engine or vLLM server over HTTP without `image_token_estimate`): DEFAULT_IMAGE_TOKENS.

An image the gateway did not size (an http(s) URL, which it never fetches) counts as an UNKNOWN_SIZE picture
under its deployment's rule."""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.image_token_counts import QwenResize, folder_image_tokens
from gateway.image_size import ImagePart

# Before routing (no deployment yet) and where no rule is known: LLaVA-1.5's 576, between OpenAI's 85 (detail
# "low") and 765 (a 1024 x 1024 "high").
DEFAULT_IMAGE_TOKENS = 576
UNKNOWN_SIZE = (1024, 1024)  # an image not sized: a common photo or screenshot scale


class ImageTokens(Protocol):
    def tokens(self, image: ImagePart) -> int: ...


@dataclass(frozen=True)
class FixedTokens:
    count: int = DEFAULT_IMAGE_TOKENS

    def tokens(self, image: ImagePart) -> int:
        return self.count


@dataclass(frozen=True)
class OpenAITiles:
    base: int = 85
    tile: int = 170

    def tokens(self, image: ImagePart) -> int:
        if image.detail == "low":
            return self.base
        width, height = image.size or UNKNOWN_SIZE
        scale = min(1.0, 2048 / max(width, height), 768 / min(width, height))  # never enlarged
        tiles = math.ceil(max(1, math.floor(width * scale)) / 512) * math.ceil(max(1, math.floor(height * scale)) / 512)
        return self.base + self.tile * tiles


@dataclass(frozen=True)
class OpenAIPatches:
    multiplier: float
    budget: int = 1536

    def tokens(self, image: ImagePart) -> int:
        width, height = image.size or UNKNOWN_SIZE
        patches = math.ceil(width / 32) * math.ceil(height / 32)
        if patches > self.budget:  # shrunk to fit the budget, then to whole patches along the tighter side
            shrink = math.sqrt(32**2 * self.budget / (width * height))
            across, down = width * shrink / 32, height * shrink / 32
            shrink *= min(math.floor(across) / across, math.floor(down) / down)
            patches = math.ceil(math.floor(width * shrink) / 32) * math.ceil(math.floor(height * shrink) / 32)
        return math.ceil(min(patches, self.budget) * self.multiplier)


@dataclass(frozen=True)
class AnthropicPatches:
    max_edge: int = 1568
    budget: int = 1568

    def tokens(self, image: ImagePart) -> int:
        long_edge, short_edge = sorted(image.size or UNKNOWN_SIZE, reverse=True)
        aspect = long_edge / short_edge

        def at_edge(edge: int) -> int:  # patches of the image shrunk to this long edge
            return math.ceil(edge / 28) * math.ceil(max(round(edge / aspect), 1) / 28)

        edges = range(1, min(long_edge, self.max_edge) + 1)
        return at_edge(max(bisect_right(edges, self.budget, key=at_edge), 1))  # the longest edge within budget


@dataclass(frozen=True)
class GeminiTiles:
    tile_tokens: int = 258

    def tokens(self, image: ImagePart) -> int:
        width, height = image.size or UNKNOWN_SIZE  # Google's "258 an image up to 384 a side" falls out of it
        return self.tile_tokens * math.ceil(width / 768) * math.ceil(height / 768)


GEMINI_LEVELS = {"low": 280, "medium": 560, "high": 1120, "ultra_high": 2240}


@dataclass(frozen=True)
class GeminiLevels:
    default: str = "high"

    def tokens(self, image: ImagePart) -> int:
        return GEMINI_LEVELS.get(image.detail, GEMINI_LEVELS[self.default])


@dataclass(frozen=True)
class QwenTokens:
    resize: QwenResize

    def tokens(self, image: ImagePart) -> int:
        return self.resize.tokens(*(image.size or UNKNOWN_SIZE))


DEFAULT = FixedTokens()
# OpenAI's models by name prefix (the longest that matches wins; a dated snapshot is its model's).
_OPENAI: dict[str, ImageTokens] = {
    "gpt-4o": OpenAITiles(), "chatgpt-4o": OpenAITiles(), "gpt-4-turbo": OpenAITiles(), "gpt-4.1": OpenAITiles(),
    "gpt-4.5": OpenAITiles(), "gpt-4o-mini": OpenAITiles(2833, 5667), "o1": OpenAITiles(75, 150),
    "o3": OpenAITiles(75, 150), "gpt-5": OpenAITiles(70, 140), "gpt-4.1-mini": OpenAIPatches(1.62),
    "gpt-4.1-nano": OpenAIPatches(2.46), "o4-mini": OpenAIPatches(1.72)}
_OPENAI_PROVIDERS = ("openai", "azure", "azure_ai")
_OPENAI_NAME = re.compile(r"^(gpt-|chatgpt-|o\d)")
_GEMINI_VERSION = re.compile(r"gemini-(\d+)")
_CLAUDE_VERSION = re.compile(r"claude-(?:(?:haiku|sonnet|opus)-)?(\d+)(?:[-.](\d{1,2})(?!\d))?")


def provider_image_tokens(model: str) -> ImageTokens:
    """The rule for a litellm model string (`openai/gpt-4o`, `bedrock/anthropic.claude-...`, `gemini/...`)."""
    provider, _, name = model.rpartition("/")
    name = name.lower()
    if "claude" in name:
        version = _CLAUDE_VERSION.search(name)
        late = version is not None and (int(version[1]), int(version[2] or 0)) >= (4, 7)
        return AnthropicPatches(2576, 4784) if late else AnthropicPatches()
    if "gemini" in name:
        version = _GEMINI_VERSION.search(name)
        return GeminiLevels() if version is not None and int(version[1]) >= 3 else GeminiTiles()
    if provider.split("/")[0] in _OPENAI_PROVIDERS or _OPENAI_NAME.match(name):
        undated = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", name)
        matches = [prefix for prefix in _OPENAI if undated == prefix or undated.startswith(prefix + "-")]
        return _OPENAI[max(matches, key=len)] if matches else OpenAITiles()
    return DEFAULT


def engine_image_tokens(model_dir: Path) -> ImageTokens:
    """An in-process engine's rule, from its checkpoint; a text-only model (which refuses images) the default."""
    counted = folder_image_tokens(model_dir)
    if isinstance(counted, QwenResize):
        return QwenTokens(counted)
    return DEFAULT if counted is None else FixedTokens(counted)


def image_tokens_for(model: str, configured: int | None, model_dir: Path | None) -> ImageTokens:
    """A deployment's rule: its model_info's `image_token_estimate` where set, else its checkpoint's (an engine in
    this process: `model_dir`), else its provider's."""
    if configured is not None:
        return FixedTokens(configured)
    if model_dir is not None:
        return engine_image_tokens(model_dir)
    return provider_image_tokens(model)
