"""An image part's size as the gateway reads it (gateway/image_size.py): from a base64 data URL's header bytes in
PNG, JPEG, GIF and WebP, a JPEG whose frame header lies past the first 48 KiB included; a payload cut after its
header still sized (no pixel is decoded); never from an http(s) URL, a file id or a payload that is not an image."""

from __future__ import annotations

import base64
import io
import struct

import pytest
from PIL import Image

from gateway.image_size import PREFIX_CHARS, ImagePart, data_url_size, message_images, part_image
from tests.gateway.image_data import as_url, encoded


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "WEBP"])
def test_each_format_is_sized_from_its_data_url(format: str) -> None:
    assert data_url_size(as_url(encoded((1800, 2400), format), f"image/{format.lower()}")) == (1800, 2400)


def test_a_payload_cut_after_its_header_is_still_sized() -> None:
    # Pixels are never decoded: a PNG's first 64 bytes (its IHDR) are enough.
    assert data_url_size(as_url(encoded((2048, 4096), "PNG")[:64])) == (2048, 4096)


@pytest.mark.parametrize("segments", [(10_000,), (60_000, 60_000)])
def test_a_jpeg_whose_frame_header_lies_past_the_first_prefix_is_read_further(segments: tuple[int, ...]) -> None:
    jpeg = encoded((640, 480), "JPEG")
    # Application segments (as EXIF, XMP and ICC blocks are) between SOI and the frame header: past the first
    # prefix, or past both (then the whole payload is decoded).
    padding = b"".join(b"\xff\xe2" + struct.pack(">H", n + 2) + bytes(n) for n in segments)
    padded = jpeg[:2] + padding + jpeg[2:]
    header_chars = len(base64.b64encode(padded[:padded.index(b"\xff\xc0") + 9]))
    assert header_chars > PREFIX_CHARS[0] and (header_chars > PREFIX_CHARS[1]) == (len(segments) > 1)
    assert data_url_size(as_url(padded, "image/jpeg")) == (640, 480)


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "data:image/png,notbase64",
                                 "data:image/png;base64,!!!!", as_url(b"plain text, not an image"), ""])
def test_anything_but_an_image_data_url_is_unsized(url: str) -> None:
    assert data_url_size(url) is None


def test_parts_of_both_apis_with_their_detail() -> None:
    png = as_url(encoded((300, 200), "PNG"))
    messages = [
        {"role": "system", "content": "plain"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
            {"type": "image_url", "image_url": "https://example.com/a.png"},  # a bare string, as some clients send
            {"type": "input_image", "image_url": png, "detail": "high"},
            {"type": "input_image", "file_id": "file-1"},
            {"type": "image_url", "image_url": {"url": png, "detail": "sideways"}}]}]
    assert message_images(messages) == (ImagePart((300, 200), "low"), ImagePart(None, "auto"),
                                        ImagePart((300, 200), "high"), ImagePart(None, "auto"),
                                        ImagePart((300, 200), "auto"))
    assert part_image({"type": "text", "text": "x"}) is None
    assert message_images("not a list") == ()


@pytest.mark.parametrize("mode, save", [("RGB", {"lossless": False}), ("RGB", {"lossless": True}),
                                        ("RGBA", {"lossless": False}), ("RGB", {"save_all": True, "duration": 50})])
def test_each_webp_kind_is_sized_from_its_riff_header(mode: str, save: dict) -> None:
    # Lossy (VP8), lossless (VP8L), with alpha or animated (VP8X): each keeps its sizes in its first 30 bytes.
    frames = [Image.new(mode, (1201, 713), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="WEBP", append_images=frames[1:] if save.get("save_all") else [], **save)
    assert data_url_size(as_url(out.getvalue()[:30], "image/webp")) == (1201, 713)
