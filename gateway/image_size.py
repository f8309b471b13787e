"""A chat's image parts as the gateway's token estimates see them: each part's width and height, read from a
base64 data URL's header bytes (Pillow's lazy `Image.open` parses the header only; no pixel is decoded; a WebP's
RIFF header is read here, as Pillow's WebP open builds libwebp's decoder, a canvas the image's size), and
its `detail`. The gateway never fetches an http(s) URL to size it: such a part's size is unknown (None) and each
estimator counts it as its default picture (gateway/image_tokens.py)."""

from __future__ import annotations

import binascii
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

# Base64 characters decoded, the next only where the header was not in the last: a PNG's, GIF's or WebP's header
# is in its first bytes, a JPEG's frame header after its EXIF segments (at most 64 KiB each, so 48 KiB holds all
# but the largest), a TIFF's wherever its first offset points; a JPEG's whole payload last. Base64 decodes at
# ~250 MB/s on this machine: the prefixes keep a large image's estimate flat (bench/image_tokens.py).
PREFIX_CHARS = (4_096, 65_536)
_JPEG = b"\xff\xd8"
_HEADER_SEARCH = 256  # where a data URL's comma may be: "data:image/png;base64," and parameters
DETAILS = ("auto", "low", "high", "medium", "ultra_high")  # the last two: Gemini 3's levels, as litellm passes them


@dataclass(frozen=True)
class ImagePart:
    size: tuple[int, int] | None  # (width, height) in pixels; None: not read (a URL, a file id, unreadable)
    detail: str = "auto"  # OpenAI's "low" / "high" / "auto", Gemini 3's "medium" / "ultra_high" (else "auto")


def data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a `data:<type>;base64,<payload>` image; None for any other URL or an undecodable one."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, _HEADER_SEARCH)
    if comma < 0 or not url[:comma].endswith(";base64"):
        return None
    payload = len(url) - comma - 1
    try:
        for chars in PREFIX_CHARS:
            head = binascii.a2b_base64(url[comma + 1:comma + 1 + min(chars, payload) // 4 * 4])
            size = _webp_size(head) or _pillow_size(head)
            if size is not None or payload <= chars:
                break
        else:
            if head.startswith(_JPEG):  # a JPEG's frame header may lie past any prefix (EXIF, XMP, ICC segments)
                size = _pillow_size(binascii.a2b_base64(url[comma + 1:]))
    except binascii.Error:
        return None
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return None  # too short a prefix, not an image, or more pixels than Pillow will open


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """A WebP's canvas from its first chunk's header (Google's container spec): extended, lossy or lossless."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":  # 24-bit canvas width and height, minus one
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 ":  # the key frame's 14-bit sizes after its start code
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L":  # 14-bit width and height, minus one, after the signature byte
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def part_image(part: Any) -> ImagePart | None:
    """Chat's `{"type": "image_url", "image_url": {"url", "detail"}}` (or a bare URL string) and the Responses API's
    `{"type": "input_image", "image_url": str, "detail"}` as an ImagePart; None for any other part."""
    if not isinstance(part, dict) or part.get("type") not in ("image_url", "input_image"):
        return None
    value = part.get("image_url")
    url, detail = (value.get("url"), value.get("detail")) if isinstance(value, dict) else (value, part.get("detail"))
    size = data_url_size(url) if isinstance(url, str) else None
    return ImagePart(size, detail if detail in DETAILS else "auto")


def message_images(messages: Any) -> tuple[ImagePart, ...]:
    """Every image part of a chat's messages, in order."""
    if not isinstance(messages, list):
        return ()
    return tuple(image for message in messages if isinstance(message, dict)
                 and isinstance(content := message.get("content"), list)
                 for part in content if (image := part_image(part)) is not None)
