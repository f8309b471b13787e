"""A prompt's images as the engine keeps them: each image's placeholder run in the prompt (where its feature
tokens go), a hash of its content, and its preprocessed pixels. The chat template renders an image as one image
token; `expand_image_tokens` widens each to the model's feature tokens per image, as LlavaProcessor does, so
`usage.prompt_tokens` counts them. `block_image_keys` is the prefix cache's "extra keys" for a block (vLLM's
multimodal hash): two images behind the same placeholder tokens give their blocks, and every block after
them, different hashes (engine/block_manager.py).

Gemma 3's processor widens an image in the prompt's text instead ("\n\n", its begin-of-image token, the image
token `mm_tokens_per_image` times, its end-of-image token, "\n\n"), so the tokenizer merges those newlines with
the text around them as transformers' does (`widen_image_text`); `image_runs` then finds each image's run. Its
images are bidirectional: an image's tokens attend to each other both ways, so the tokens of an image still to
compute are computed in one prefill chunk (`whole_images_chunk`). A cached prefix may end inside an image: its blocks were
computed with the whole image in one chunk, so their K/V are exact, and the rest of the image attends to all of it."""

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
    bidirectional: bool = False  # its tokens see each other both ways (Gemma 3): computed in one chunk
    grid_thw: tuple[int, int, int] | None = None  # Qwen2.5-VL: its patch grid (pixel_values [t*h*w, patch])

    @property
    def end(self) -> int:
        return self.offset + self.length


def content_hash(mode: str, size: tuple[int, int], pixels: bytes) -> int:
    """63 bits of BLAKE2b: stable across processes, as the disk tier's keys must be."""
    digest = hashlib.blake2b(f"{mode}:{size[0]}x{size[1]}:".encode() + pixels, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def expand_image_tokens(prompt_ids: list[int], image_token_id: int, tokens_per_image: int | list[int],
                        hashes: list[int], pixel_values: list[torch.Tensor],
                        grids: list[tuple[int, int, int]] | None = None) -> tuple[list[int], list[ImageInput]]:
    """The prompt with each image token repeated `tokens_per_image` times (a list: each image's own count, as
    Qwen2.5-VL's dynamic resolution gives, with its patch grid), and where each image's run lies.
    The caller checked that the prompt holds exactly one image token per image."""
    ids: list[int] = []
    images: list[ImageInput] = []
    for token in prompt_ids:
        if token != image_token_id:
            ids.append(token)
            continue
        k = len(images)
        count = tokens_per_image if isinstance(tokens_per_image, int) else tokens_per_image[k]
        images.append(ImageInput(len(ids), count, hashes[k], pixel_values[k],
                                 grid_thw=grids[k] if grids is not None else None))
        ids.extend([image_token_id] * count)
    assert len(images) == len(hashes), "one image token per image"
    return ids, images


def block_image_keys(images: list[ImageInput], start: int, end: int) -> tuple[int, ...]:
    """The content hashes of the images with feature tokens in positions [start, end)."""
    return tuple(image.content_hash for image in images if image.offset < end and image.end > start)


def widen_image_text(text: str, begin: str, image: str, end: str, tokens_per_image: int) -> str:
    """Gemma3Processor's expansion: each `begin` (the begin-of-image token, what the template renders for an
    image) as the image's full sequence."""
    return text.replace(begin, f"\n\n{begin}{image * tokens_per_image}{end}\n\n")


def image_runs(prompt_ids: list[int], image_token_id: int, tokens_per_image: int, hashes: list[int],
               pixel_values: list[torch.Tensor]) -> list[ImageInput] | None:
    """Each image's run of `tokens_per_image` image tokens in a prompt widened in its text (bidirectional
    images); None unless the prompt holds exactly one such run an image (the image token typed in the text)."""
    starts = [i for i, token in enumerate(prompt_ids)
              if token == image_token_id and (i == 0 or prompt_ids[i - 1] != image_token_id)]
    if len(starts) != len(hashes) or prompt_ids.count(image_token_id) != len(hashes) * tokens_per_image:
        return None
    if any(prompt_ids[s: s + tokens_per_image] != [image_token_id] * tokens_per_image for s in starts):
        return None
    return [ImageInput(s, tokens_per_image, h, p, bidirectional=True)
            for s, h, p in zip(starts, hashes, pixel_values, strict=True)]


def bidirectional_spans(images: list[ImageInput], start: int, end: int) -> list[tuple[int, int]]:
    """The [offset, end) runs of the bidirectional images a prefill of positions [start, end) computes tokens of."""
    return [(image.offset, image.end) for image in images if image.bidirectional and image.offset < end
            and image.end > start]


def whole_images_chunk(images: list[ImageInput], start: int, num_tokens: int) -> int:
    """The most of `num_tokens` prompt tokens from `start` one prefill chunk computes without ending inside a
    bidirectional image: the chunk ends before such an image it cannot hold (0 where one starts at `start`)."""
    end = start + num_tokens
    for image in images:
        if image.bidirectional and image.offset < end < image.end:
            end = max(start, image.offset)  # images do not overlap: earlier ones end before this one starts
    return end - start

