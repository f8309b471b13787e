"""The bodies of OpenAI's audio and image endpoints, as OpenAI takes them, checked here so a bad request is a
400 naming its field before it takes a rate slot:

    POST /v1/audio/transcriptions, /translations   multipart: file, model, language (transcriptions), prompt,
                                                    response_format, temperature, timestamp_granularities[]
    POST /v1/audio/speech                           JSON: model, input, voice, response_format, speed, instructions
    POST /v1/images/generations                     JSON: model, prompt, n, size, quality, style, response_format,
                                                    background, output_format, output_compression, moderation, user
    POST /v1/images/edits                           multipart: image (or image[]: up to 16 files), mask, prompt,
                                                    model, n, size, quality, response_format, background,
                                                    input_fidelity, output_format, output_compression, user

Each is written as the call's body (what gateway/backends/ send on) and as the request the gateway's limits
and outcome row read, billed as embeddings are for tokens (none, unless the provider reports some) plus its
units at the model's unit prices (gateway/media_prices.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData

from engine.server.errors import bad_request
from gateway.audio_upload import UploadedFile
from gateway.backends.base import Kind
from gateway.request_body import ProxyRequest, asked_priority

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
                "pcm": "audio/pcm"}
MAX_SPEECH_CHARS = 4096  # OpenAI's
MAX_IMAGES = 10  # OpenAI's `n`
IMAGE_FORMATS = ("url", "b64_json")
DEFAULT_IMAGE_MODEL = "dall-e-2"  # OpenAI's, where a request names none
_IMAGE_FIELDS = ("quality", "style", "background", "output_format", "output_compression", "moderation", "user")
_TRANSCRIPT_TEXT_FIELDS = ("language", "prompt", "chunking_strategy")
MAX_EDIT_IMAGES = 16  # gpt-image-1's; DALL-E 2 takes one
MAX_EDIT_PROMPT_CHARS = 32_000  # gpt-image-1's (DALL-E 2: 1,000)
_EDIT_TEXT_FIELDS = ("quality", "background", "input_fidelity", "output_format", "user")


@dataclass(frozen=True)
class MediaRequest:
    kind: Kind
    model: str
    body: dict[str, Any]  # the call's: an audio's `file`, an edit's `image` (a list) and `mask` are UploadedFiles
    text: str  # the text it sends (a speech's input, an image's prompt, a transcription's prompt)
    priority: float | None
    units: float | None = None  # known before the call: a speech's characters, the images asked, a WAV's seconds

    def as_request(self) -> ProxyRequest:
        """The request the gateway limits and logs: billed as embeddings are, its text as the row's prompt."""
        body = {"model": self.model, **({"input": self.text} if self.kind in ("speech", "image", "image_edit") else {})}
        return ProxyRequest(kind="embedding", model=self.model, body=body, stream=False, include_usage=False,
                            session_id=None, priority=self.priority, pin_ttl_s=None, cost_preference=None,
                            prompt_text="", prompt_chars=len(self.text))


def _model(raw: Any, default: str | None = None) -> str:
    model = raw.get("model", default)
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: a non-empty string", "model", "missing_required_parameter")
    return model


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise bad_request(f"'{name}' must be one of {', '.join(allowed)}, not {value!r}", name, "invalid_value")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"'{name}' must be a number", name, "invalid_type") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}", name, "invalid_value")
    return number


def parse_transcription(form: FormData, file: UploadedFile, kind: Kind, seconds: float | None) -> MediaRequest:
    """A transcription's or translation's form, its file read (gateway/audio_upload.py)."""
    model = _model({"model": form.get("model")})
    if kind == "translation" and form.get("language") is not None:
        raise bad_request("'language': a translation is always into English; send no language", "language",
                          "invalid_value")
    stream = form.get("stream")
    if isinstance(stream, str) and stream.lower() == "true":
        raise bad_request("'stream': streamed transcriptions are not supported by this gateway; send stream=false",
                          "stream", "unsupported_value")
    body: dict[str, Any] = {"model": model, "file": file}
    for name in _TRANSCRIPT_TEXT_FIELDS:
        if isinstance(value := form.get(name), str):
            body[name] = value
    if (fmt := _choice(form.get("response_format"), "response_format", TRANSCRIPT_FORMATS)) is not None:
        body["response_format"] = fmt
    if (temperature := _number(form.get("temperature"), "temperature", 0.0, 1.0)) is not None:
        body["temperature"] = temperature
    granularities = form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities")
    for value in granularities:
        _choice(value, "timestamp_granularities[]", ("word", "segment"))
    if granularities:
        body["timestamp_granularities"] = list(granularities)
    return MediaRequest(kind, model, body, str(body.get("prompt", "")), asked_priority(dict(form)), seconds)


def parse_speech(raw: Any) -> MediaRequest:
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    model = _model(raw)
    text = raw.get("input")
    if not isinstance(text, str) or not text:
        raise bad_request("'input' is required: the text to speak, a non-empty string", "input",
                          "missing_required_parameter")
    if len(text) > MAX_SPEECH_CHARS:
        raise bad_request(f"'input' holds {len(text)} characters; at most {MAX_SPEECH_CHARS}", "input", "invalid_value")
    voice = raw.get("voice")
    if not (isinstance(voice, str) and voice) and not (isinstance(voice, dict) and isinstance(voice.get("id"), str)):
        raise bad_request("'voice' is required: a voice's name (alloy, ash, ...) or {\"id\"}", "voice",
                          "missing_required_parameter")
    _choice(raw.get("response_format"), "response_format", SPEECH_FORMATS)
    _number(raw.get("speed"), "speed", 0.25, 4.0)
    if raw.get("stream_format") not in (None, "audio"):
        raise bad_request("'stream_format': only `audio` (the bytes as they come) is served", "stream_format",
                          "unsupported_value")
    body = {k: v for k, v in raw.items() if k not in ("priority", "service_tier", "stream_format")}
    return MediaRequest("speech", model, body, text, asked_priority(raw), float(len(text)))


def parse_image(raw: Any) -> MediaRequest:
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    model = _model(raw, DEFAULT_IMAGE_MODEL)
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' is required: a non-empty string", "prompt", "missing_required_parameter")
    n = raw.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise bad_request(f"'n' must be an integer from 1 to {MAX_IMAGES}", "n", "invalid_value")
    _choice(raw.get("response_format"), "response_format", IMAGE_FORMATS)
    size = raw.get("size")
    if size is not None and not (isinstance(size, str) and (size == "auto" or _dimensions(size) is not None)):
        raise bad_request(f"'size' must be WIDTHxHEIGHT (1024x1024) or auto, not {size!r}", "size", "invalid_value")
    for name in _IMAGE_FIELDS:
        if name in raw and raw[name] is not None and not isinstance(raw[name], str | int):
            raise bad_request(f"'{name}' must be a string", name, "invalid_type")
    body = {k: v for k, v in raw.items() if k not in ("priority", "service_tier", "stream")}
    body["model"] = model
    return MediaRequest("image", model, body, prompt, asked_priority(raw), float(n))


def parse_image_edit(form: FormData, images: list[UploadedFile], mask: UploadedFile | None) -> MediaRequest:
    """An image edit's form, its files read (gateway/audio_upload.py uploaded_files)."""
    model = _model({"model": form.get("model") or DEFAULT_IMAGE_MODEL})
    if not images:
        raise bad_request("'image' is required: the image to edit, as a multipart file part (image[] for several)",
                          "image", "missing_required_parameter")
    if len(images) > MAX_EDIT_IMAGES:
        raise bad_request(f"'image' holds {len(images)} files; at most {MAX_EDIT_IMAGES}", "image", "invalid_value")
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' is required: a non-empty string", "prompt", "missing_required_parameter")
    if len(prompt) > MAX_EDIT_PROMPT_CHARS:
        raise bad_request(f"'prompt' holds {len(prompt)} characters; at most {MAX_EDIT_PROMPT_CHARS}", "prompt",
                          "invalid_value")
    n = _number(form.get("n"), "n", 1, MAX_IMAGES)
    if n is not None and n != int(n):
        raise bad_request(f"'n' must be an integer from 1 to {MAX_IMAGES}", "n", "invalid_value")
    body: dict[str, Any] = {"model": model, "prompt": prompt, "image": images}
    if mask is not None:
        body["mask"] = mask
    if n is not None:
        body["n"] = int(n)
    if (fmt := _choice(form.get("response_format"), "response_format", IMAGE_FORMATS)) is not None:
        body["response_format"] = fmt
    size = form.get("size")
    if size is not None and not (isinstance(size, str) and (size == "auto" or _dimensions(size) is not None)):
        raise bad_request(f"'size' must be WIDTHxHEIGHT (1024x1024) or auto, not {size!r}", "size", "invalid_value")
    if size is not None:
        body["size"] = size
    if (compression := _number(form.get("output_compression"), "output_compression", 0, 100)) is not None:
        body["output_compression"] = int(compression)
    for name in _EDIT_TEXT_FIELDS:
        if isinstance(value := form.get(name), str):
            body[name] = value
    return MediaRequest("image_edit", model, body, prompt, asked_priority(dict(form)), float(n or 1))


def _dimensions(size: str) -> tuple[int, int] | None:
    width, _, height = size.partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


def image_pixels(size: Any) -> int | None:
    """An image's pixels from its `size` (None: auto, or none given)."""
    dims = _dimensions(size) if isinstance(size, str) else None
    return dims[0] * dims[1] if dims else None
