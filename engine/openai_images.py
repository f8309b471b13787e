"""A chat request's images made ready for the engine: refused on a text-only model and past the engine's image
limits before anything is fetched (engine/config.py ImageLimits), fetched or decoded (engine/image_fetch.py),
preprocessed by the checkpoint's own image processor (transformers' AutoImageProcessor over the folder's
preprocessor_config.json, nothing downloaded), hashed, and the rendered prompt's image tokens widened to each
image's feature tokens (engine/image_inputs.py), or, for Gemma 3, widened in the rendered text and found."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.async_engine import AsyncEngine
from engine.chat_images import image_urls
from engine.image_fetch import decode_image, image_bytes, media_client
from engine.image_inputs import ImageInput, content_hash, expand_image_tokens, image_runs, widen_image_text
from engine.server.errors import bad_request
from engine.server.protocol import GenerateRequest

if TYPE_CHECKING:  # the gateway imports this module, and torch only with an in-process engine
    import torch


def requested_images(engine: AsyncEngine, parsed: GenerateRequest) -> list[tuple[str, str]]:
    """The request's (url, param) image parts, checked against the model and the limits."""
    urls = image_urls(parsed.messages) if parsed.messages is not None else []
    if not urls:
        return []
    if getattr(engine.engine.runner, "image_features", None) is None:
        raise bad_request("this model does not take image inputs", "messages", "unsupported")
    limit = engine.engine.config.image_limits.max_images
    if len(urls) > limit:
        raise bad_request(f"{len(urls)} images in one prompt: this engine takes at most {limit} "
                          "(--limit-images-per-prompt)", "messages", "too_many_images")
    if parsed.truncate_prompt_tokens is not None:
        raise bad_request("'truncate_prompt_tokens' would cut images' tokens: not allowed with images",
                          "truncate_prompt_tokens", "unsupported")
    return urls


async def with_images(engine: AsyncEngine, urls: list[tuple[str, str]],
                      prompt_ids: list[int]) -> tuple[list[int], list[ImageInput]]:
    """The prompt with each image token widened to its features' tokens, and the images."""
    runner: Any = engine.engine.runner
    limits = engine.engine.config.image_limits
    async with media_client(limits) as client:  # each connection's address checked (engine/net_guard.py)
        data = await asyncio.gather(*(image_bytes(url, param, limits, client) for url, param in urls))

    def prepare() -> tuple[list[int], list[torch.Tensor], list[tuple[int, int, int]] | None]:
        pictures = [decode_image(d, param) for d, (_, param) in zip(data, urls, strict=True)]
        hashes = [content_hash(p.mode, p.size, p.tobytes()) for p in pictures]
        processed = image_processor(runner.model_dir)(images=pictures, return_tensors="pt")
        if "image_grid_thw" not in processed:
            return hashes, list(processed["pixel_values"]), None
        # Qwen2.5-VL: every image's patches in one matrix, each image's (t, h, w) grid beside it
        grids = [tuple(int(n) for n in grid) for grid in processed["image_grid_thw"]]
        pixels = processed["pixel_values"].split([t * h * w for t, h, w in grids])
        return hashes, list(pixels), grids  # type: ignore[return-value]

    hashes, pixels, grids = await asyncio.to_thread(prepare)
    vision = runner.vision
    if vision.text_expansion:  # Gemma 3: the prompt holds each image's run already (widened_chat_text)
        images = image_runs(prompt_ids, vision.image_token_id, vision.tokens_per_image, hashes, pixels)
        if images is None:
            raise bad_request(f"the prompt does not hold {len(urls)} images' token runs (is an image token in the "
                              "text?)", "messages", "invalid_value")
        return prompt_ids, images
    if prompt_ids.count(vision.image_token_id) != len(urls):
        raise bad_request(f"the chat template rendered {prompt_ids.count(vision.image_token_id)} image tokens for "
                          f"{len(urls)} images (is the image token in the text?)", "messages", "invalid_value")
    if grids is not None:  # dynamic resolution: each image its merged grid's tokens, as Qwen2_5_VLProcessor widens
        counts = [t * h * w // vision.merge_size**2 for t, h, w in grids]
        return expand_image_tokens(prompt_ids, vision.image_token_id, counts, hashes, pixels, grids)
    return expand_image_tokens(prompt_ids, vision.image_token_id, vision.tokens_per_image, hashes, pixels)


def widened_chat_text(engine: AsyncEngine, messages: list[dict], text: str) -> str:
    """A rendered chat with each image widened in its text, where the model's processor does that (Gemma 3's:
    the tokenizer then merges its newlines with the text around as transformers' does); `text` otherwise."""
    vision = getattr(getattr(getattr(engine, "engine", None), "runner", None), "vision", None)
    if vision is None or not vision.text_expansion or not image_urls(messages) or engine.tokenizer is None:
        return text
    names = [engine.tokenizer.id_to_token(i) for i in (vision.boi_token_id, vision.image_token_id, vision.eoi_token_id)]
    return widen_image_text(text, *names, vision.tokens_per_image)  # type: ignore[arg-type]


@lru_cache(maxsize=8)
def image_processor(model_dir: Path) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)
