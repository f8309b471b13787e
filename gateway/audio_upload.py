"""An upload (POST /v1/audio/transcriptions and /translations: an audio file; /v1/images/edits: images and a
mask; multipart/form-data), read with its size capped: a declared Content-Length past the cap is a 413 before a byte is read, a chunked body is cut (413) as
soon as it passes it. Parsed by starlette's multipart parser, which spools a file past 1 MiB to a temporary
file; the file is then read once into memory, the one copy that is sent on (retries reuse it). And how long
the audio plays, where its header says: a WAV's (RIFF) `fmt ` and `data` chunks."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from engine.server.errors import APIError, bad_request

DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit on an audio file


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content: bytes
    content_type: str


def too_large(limit: int) -> APIError:
    return APIError(413, f"the upload is larger than {limit} bytes (server.max_upload_bytes)", "file",
                    "upload_too_large")


async def _capped(request: Request, limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


async def read_form(request: Request, limit: int, max_files: int = 1) -> FormData:
    """The multipart form, or a 4xx: not multipart (400), too large (413), malformed (400)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request(f"the body must be multipart/form-data (a `file` and a `model`), not {content_type or 'none'!r}",
                          code="invalid_content_type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    try:
        return await MultiPartParser(request.headers, _capped(request, limit), max_files=max_files,
                                     max_fields=64).parse()
    except MultiPartException as exc:
        raise bad_request(f"the multipart body is malformed: {exc.message}", code="invalid_multipart") from None


async def audio_file(form: FormData) -> UploadedFile:
    """The form's `file`, read once, or a 400 naming it."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise bad_request("'file' is required: the audio file to transcribe, as a multipart file part", "file",
                          "missing_required_parameter")
    content = await upload.read()
    await upload.close()
    if not content:
        raise bad_request("'file' is empty", "file", "invalid_value")
    return UploadedFile(upload.filename or "audio", content, upload.content_type or "application/octet-stream")


async def uploaded_files(form: FormData, name: str, what: str) -> list[UploadedFile]:
    """The form's files under `name` or `name[]` (OpenAI's SDK writes a list so), each read once; a 400 naming
    the field for a value that is not a file or a file that is empty."""
    files = []
    for field in (name, f"{name}[]"):
        for upload in form.getlist(field):
            if not isinstance(upload, UploadFile):
                raise bad_request(f"'{name}' must be {what}, as a multipart file part", name, "invalid_type")
            content = await upload.read()
            await upload.close()
            if not content:
                raise bad_request(f"'{name}' holds an empty file ({upload.filename or 'unnamed'})", name, "invalid_value")
            files.append(UploadedFile(upload.filename or name, content, upload.content_type or "application/octet-stream"))
    return files


def wav_seconds(content: bytes) -> float | None:
    """How long a WAV file plays (its `data` chunk's bytes over the `fmt ` chunk's byte rate); None for any
    other file, or a header that does not add up."""
    if len(content) < 12 or content[:4] != b"RIFF" or content[8:12] != b"WAVE":
        return None
    byte_rate, offset = None, 12
    while offset + 8 <= len(content):
        chunk_id, size = content[offset:offset + 4], struct.unpack_from("<I", content, offset + 4)[0]
        if chunk_id == b"fmt " and size >= 16 and offset + 20 <= len(content):
            byte_rate = struct.unpack_from("<I", content, offset + 16)[0]
        elif chunk_id == b"data":
            data = min(size, len(content) - offset - 8)  # a streamed WAV may say 0xFFFFFFFF
            return data / byte_rate if byte_rate else None
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return None
