"""Pictures as data URLs for the gateway's image estimates' tests: a solid colour in any size and format, so a
2048 x 4096 PNG is a few KB."""

from __future__ import annotations

import base64
import io

from PIL import Image


def encoded(size: tuple[int, int], format: str, **save: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format=format, **save)
    return out.getvalue()


def as_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


TALL = as_url(encoded((2048, 4096), "PNG"))  # OpenAI: 768 x 1536 after fitting, 6 tiles: 85 + 6 x 170 = 1105
SMALL = as_url(encoded((300, 200), "PNG"))  # OpenAI: one tile, 255
