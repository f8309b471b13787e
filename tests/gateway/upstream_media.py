"""How the fake upstream (tests/gateway/upstream.py) answers OpenAI's audio and image endpoints, each answer
derived from what it was sent, so a test knows it in advance and proves the bytes arrived intact:

  POST /v1/audio/transcriptions, /translations   the text `transcript_text(file bytes, name)`: the file's length
                                                 and SHA-256 prefix; json, text, srt, vtt or verbose_json (with
                                                 the audio's `duration`: a WAV's header's, else bytes / 32000)
  POST /v1/audio/speech                          `speech_audio(input)` (1,000 bytes a character; `[bytes:N]` in
                                                 the input: N bytes), streamed in 16 KiB chunks
  POST /v1/images/generations                    `n` images, `image_b64(prompt, i)` or `image_url(prompt, i)`
  POST /v1/images/edits                          `n` images, `edited_b64(prompt, images, mask, i)` (or a URL):
                                                 a hash of the prompt and every uploaded byte, in order

The upstream's directives in the prompt, input (or a transcription's `prompt` field) apply ([fail:500],
[fail:503@a], [delay:2]), and so does its admin fail mode; a speech's `[break:2]` drops the connection after
2 chunks, `[gap:0.2]` waits 0.2 s between chunks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from typing import Any

from gateway.audio_upload import wav_seconds
from tests.gateway.upstream_answers import Upstream, directives, error_response

SPEECH_BYTES_A_CHARACTER = 1000
_BYTES = re.compile(r"\[bytes:(\d+)\]")
_GAP = re.compile(r"\[gap:([0-9.]+)\]")  # seconds between a speech's chunks
SPEECH_CHUNK = 16 * 1024
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
                "pcm": "audio/pcm"}


def transcript_text(content: bytes, name: str, translated: bool = False) -> str:
    verb = "translated" if translated else "heard"
    return f"{verb} {len(content)} bytes sha256 {hashlib.sha256(content).hexdigest()[:16]} from-{name}"


def audio_duration(content: bytes) -> float:
    seconds = wav_seconds(content)
    return seconds if seconds is not None else len(content) / 32_000


def speech_audio(text: str) -> bytes:
    asked = _BYTES.search(text)
    size = int(asked.group(1)) if asked else SPEECH_BYTES_A_CHARACTER * len(text)
    seed = hashlib.sha256(text.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def image_b64(prompt: str, i: int) -> str:
    return base64.b64encode(hashlib.sha256(f"{prompt}#{i}".encode()).digest()).decode()


def image_url(prompt: str, i: int) -> str:
    return f"https://images.example/{hashlib.sha256(f'{prompt}#{i}'.encode()).hexdigest()[:16]}.png"


async def _faulted(upstream: Upstream, text: str) -> Any:
    """The error a directive or the admin fail mode asks for, after any delay; None to answer."""
    found = directives(text, upstream.name)
    await asyncio.sleep(min(found.get("delay", 0.0), 30.0))
    if fail := upstream.fail_status or int(found.get("fail", 0)):
        return error_response(fail, f"injected {fail} from {upstream.name}")
    return None


async def transcribe(upstream: Upstream, request: Any, translated: bool) -> Any:
    from starlette.datastructures import UploadFile
    from starlette.responses import JSONResponse, PlainTextResponse

    upstream.requests += 1
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not isinstance(form.get("model"), str):
        return error_response(400, "file and model are required")
    content = await upload.read()
    fields = {k: v for k, v in form.multi_items() if k != "file"}
    upstream.bodies = [*upstream.bodies[-49:], {**fields, "file": {"filename": upload.filename, "bytes": len(content),
                                                                   "content_type": upload.content_type}}]
    if (fault := await _faulted(upstream, str(form.get("prompt") or ""))) is not None:
        return fault
    text = transcript_text(content, upstream.name, translated)
    fmt = form.get("response_format") or "json"
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt in ("srt", "vtt"):
        header = "WEBVTT\n\n" if fmt == "vtt" else "1\n"
        return PlainTextResponse(f"{header}00:00:00.000 --> 00:00:01.000\n{text}\n")
    if fmt == "verbose_json":
        return JSONResponse({"task": "translate" if translated else "transcribe", "language": "english",
                             "duration": audio_duration(content), "text": text, "segments": []})
    return JSONResponse({"text": text})


async def speak(upstream: Upstream, body: Any) -> Any:
    from starlette.responses import StreamingResponse

    upstream.requests += 1
    if not isinstance(body, dict) or not isinstance(body.get("input"), str) or not body.get("voice"):
        return error_response(400, "input and voice are required")
    upstream.bodies = [*upstream.bodies[-49:], body]
    if (fault := await _faulted(upstream, body["input"])) is not None:
        return fault
    audio = speech_audio(body["input"])
    found = directives(body["input"], upstream.name)
    break_after = int(found["break"]) if "break" in found else None
    gap = float(gap_asked.group(1)) if (gap_asked := _GAP.search(body["input"])) else 0.0

    async def chunks() -> Any:
        for i, start in enumerate(range(0, len(audio), SPEECH_CHUNK)):
            if break_after is not None and i >= break_after:
                raise ConnectionAbortedError("injected stream break")  # uvicorn drops the connection
            yield audio[start:start + SPEECH_CHUNK]
            await asyncio.sleep(gap)

    return StreamingResponse(chunks(), media_type=SPEECH_TYPES[body.get("response_format") or "mp3"])


async def generate_images(upstream: Upstream, body: Any) -> Any:
    from starlette.responses import JSONResponse

    upstream.requests += 1
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        return error_response(400, "prompt is required")
    upstream.bodies = [*upstream.bodies[-49:], body]
    prompt = body["prompt"]
    if (fault := await _faulted(upstream, prompt)) is not None:
        return fault
    b64 = body.get("response_format") == "b64_json"
    data = [{"b64_json": image_b64(prompt, i)} if b64 else {"url": image_url(prompt, i)}
            for i in range(int(body.get("n") or 1))]
    return JSONResponse({"created": 1_700_000_000, "data": data})


def edited_b64(prompt: str, images: list[bytes], mask: bytes | None, i: int) -> str:
    digest = hashlib.sha256(f"{prompt}#{i}".encode())
    for content in (*images, mask or b""):
        digest.update(hashlib.sha256(content).digest())
    return base64.b64encode(digest.digest()).decode()


async def edit_images(upstream: Upstream, request: Any) -> Any:
    """An image edit's multipart form: `image` (or `image[]`), an optional `mask`, the prompt and fields."""
    from starlette.datastructures import UploadFile
    from starlette.responses import JSONResponse

    upstream.requests += 1
    form = await request.form(max_files=32)
    uploads = [u for u in (*form.getlist("image"), *form.getlist("image[]")) if isinstance(u, UploadFile)]
    mask = form.get("mask")
    prompt = form.get("prompt")
    if not uploads or not isinstance(prompt, str) or not isinstance(form.get("model"), str):
        return error_response(400, "image, prompt and model are required")
    images = [await u.read() for u in uploads]
    mask_bytes = await mask.read() if isinstance(mask, UploadFile) else None
    fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    upstream.bodies = [*upstream.bodies[-49:], {**fields, "image_fields": [k for k, v in form.multi_items()
                                                                            if isinstance(v, UploadFile) and k != "mask"],
                                                "images": [{"filename": u.filename, "bytes": len(c), "content_type":
                                                            u.content_type} for u, c in zip(uploads, images, strict=True)],
                                                "mask": None if mask_bytes is None else len(mask_bytes)}]
    if (fault := await _faulted(upstream, prompt)) is not None:
        return fault
    n = int(str(form.get("n") or 1))
    if form.get("response_format") == "url":
        data = [{"url": image_url(f"edit {prompt}", i)} for i in range(n)]
    else:  # gpt-image-1 answers b64_json only
        data = [{"b64_json": edited_b64(prompt, images, mask_bytes, i)} for i in range(n)]
    return JSONResponse({"created": 1_700_000_000, "data": data})
