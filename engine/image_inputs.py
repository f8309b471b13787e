"""A prompt's images as the engine keeps them: each image's placeholder run in the prompt (where its feature
tokens go), a hash of its content, and its preprocessed pixels. The chat template renders an image as one image
token; `expand_image_tokens` widens each to the model's feature tokens per image, as LlavaProcessor does, so
`usage.prompt_tokens` counts them. `block_image_keys` is the prefix cache's "extra keys" for a block (vLLM's
multimodal hash): two images behind the same placeholder tokens give their blocks, and every block after
them, different hashes (engine/block_manager.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gateway imports the block manager, and torch only with an in-process engine
    import torch


@dataclass(frozen=True, eq=False)
class ImageInput:
    offset: int  # the prompt position of its first feature token
    length: int  # its feature tokens
    content_hash: int  # of the decoded pixels: the same picture hashes alike whatever request sends it
    pixel_values: torch.Tensor  # [3, H, W], as the model's image processor made it

    @property
    def end(self) -> int:
        return self.offset + self.length


def content_hash(mode: str, size: tuple[int, int], pixels: bytes) -> int:
    """63 bits of BLAKE2b: stable across processes, as the disk tier's keys must be."""
    digest = hashlib.blake2b(f"{mode}:{size[0]}x{size[1]}:".encode() + pixels, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def expand_image_tokens(prompt_ids: list[int], image_token_id: int, tokens_per_image: int,
                        hashes: list[int], pixel_values: list[torch.Tensor]) -> tuple[list[int], list[ImageInput]]:
    """The prompt with each image token repeated `tokens_per_image` times, and where each image's run lies.
    The caller checked that the prompt holds exactly one image token per image."""
    ids: list[int] = []
    images: list[ImageInput] = []
    for token in prompt_ids:
        if token != image_token_id:
            ids.append(token)
            continue
        k = len(images)
        images.append(ImageInput(len(ids), tokens_per_image, hashes[k], pixel_values[k]))
        ids.extend([image_token_id] * tokens_per_image)
    assert len(images) == len(hashes), "one image token per image"
    return ids, images


def block_image_keys(images: list[ImageInput], start: int, end: int) -> tuple[int, ...]:
    """The content hashes of the images with feature tokens in positions [start, end)."""
    return tuple(image.content_hash for image in images if image.offset < end and image.end > start)
