"""OpenAI's audio and image endpoints on an OpenAI-compatible server, for the direct transport
(gateway/backends/openai_http.py): a transcription's or translation's multipart upload (the file's bytes as
they were read, once), an image generation's JSON, an image edit's multipart upload (its images and mask), and
a speech's audio read back as it arrives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from gateway.audio_upload import UploadedFile
from gateway.backends.base import BackendError, Kind

PATHS = {"transcription": "/audio/transcriptions", "translation": "/audio/translations", "speech": "/audio/speech",
         "image": "/images/generations", "image_edit": "/images/edits", "video": "/videos"}
SPEECH_CHUNK_BYTES = 64 * 1024


def _form(body: dict, served_model: str) -> aiohttp.FormData:
    """The body as multipart: its files (a transcription's `file`, an edit's `image` and `mask`) as file parts, an
    edit's several images as OpenAI's SDK sends them (`image[]`), other lists as `name[]` fields."""
    form = aiohttp.FormData()
    form.add_field("model", served_model)
    for name, value in body.items():
        if name == "model":
            continue
        items = value if isinstance(value, list) else [value]
        listed = isinstance(value, list) and not (name == "image" and len(value) == 1)  # one image: `image`
        field = f"{name}[]" if listed else name
        for item in items:
            if isinstance(item, UploadedFile):
                form.add_field(field, item.content, filename=item.filename, content_type=item.content_type)
            else:
                form.add_field(field, str(item))
    return form


def transcript(raw: bytes, content_type: str) -> dict[str, Any]:
    """A transcription's answer as the gateway passes it back: its bytes and type as they came, and what it
    reports of itself where it is JSON (`duration`, verbose_json's; `usage`: tokens, or OpenAI's
    `{"type": "duration", "seconds"}`)."""
    answer: dict[str, Any] = {"content": raw, "content_type": content_type, "duration": None, "usage": None}
    if "json" in content_type:
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise BackendError(502, "upstream sent invalid JSON", retryable=True, code="bad_upstream_response") from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
            raise BackendError(502, "upstream's transcription has no `text`", retryable=False,
                               code="bad_upstream_response")
        answer["duration"] = parsed.get("duration")
        answer["usage"] = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else None
    return answer


def checked_video(answer: Any) -> dict:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str) or not isinstance(answer.get("status"), str):
        raise BackendError(502, "upstream's video answer has no `id` and `status`", retryable=False,
                           code="bad_upstream_response")
    return answer


def checked_images(answer: Any) -> dict:
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise BackendError(502, "upstream's image answer has no `data` list", retryable=False,
                           code="bad_upstream_response")
    return answer


async def post_media(session: aiohttp.ClientSession, api_base: str, served_model: str, kind: Kind, body: dict,
                     timeout: aiohttp.ClientTimeout, headers: dict[str, str] | None) -> tuple[int, bytes, str]:
    """(status, body, content type) of a transcription, translation, image generation or edit, or a video's
    create (JSON, or multipart with its `input_reference` image)."""
    url = api_base + PATHS[kind]
    if kind == "image" or (kind == "video" and "input_reference" not in body):
        sent: dict[str, Any] = {"json": {**body, "model": served_model}}
    else:
        sent = {"data": _form(body, served_model)}
    async with session.post(url, timeout=timeout, headers=headers, **sent) as response:
        return response.status, await response.read(), response.headers.get("content-type", "")


async def speech_chunks(session: aiohttp.ClientSession, api_base: str, served_model: str, body: dict,
                        timeout: aiohttp.ClientTimeout, headers: dict[str, str] | None,
                        on_error: Any) -> AsyncIterator[dict]:
    """The speech's audio as the server sends it; `on_error(status, raw)` makes a non-200 answer's error."""
    async with session.post(api_base + PATHS["speech"], json={**body, "model": served_model}, timeout=timeout,
                            headers=headers) as response:
        if response.status != 200:
            raise on_error(response.status, await response.read())
        content_type = response.headers.get("content-type", "application/octet-stream")
        async for chunk in response.content.iter_chunked(SPEECH_CHUNK_BYTES):
            yield {"audio": chunk, "content_type": content_type}
