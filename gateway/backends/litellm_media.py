"""OpenAI's audio and image endpoints through litellm (gateway/backends/litellm_backend.py): `atranscription`
(its file as (name, bytes, type), the bytes read once), `aspeech` (litellm reads the whole audio before it
answers: one chunk), `aimage_generation`, `aimage_edit` (its images and mask as bytes). This litellm has no `atranslation`: a translation on a litellm
deployment is a 400 that says to use an OpenAI-compatible `api_base` (the direct transport). A video's create is
`avideo_generation` (gateway/backends/video_calls.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.backends.base import BackendError, CallContext, Kind
from gateway.backends.openai_media import checked_images
from gateway.backends.video_calls import video_create

_TEXT_FORMATS = ("text", "srt", "vtt")


def _kwargs(params: dict, body: dict, ctx: CallContext) -> dict:
    kwargs = {k: v for k, v in body.items() if k not in ("model", "file", "image", "mask", "input_reference")}
    kwargs.update(params, timeout=ctx.timeout_s, num_retries=0)
    return kwargs


def _edit_files(body: dict) -> dict:
    """An edit's images and mask as litellm sends them on: their bytes (it names them itself, typed by content)."""
    images = [upload.content for upload in body["image"]]
    mask = body.get("mask")
    return {"image": images[0] if len(images) == 1 else images, **({"mask": mask.content} if mask is not None else {})}


def _public(answer: dict) -> dict:
    """litellm's response object as OpenAI's JSON: its private fields (`_hidden_params`, ...) left out."""
    return {k: v for k, v in answer.items() if not k.startswith("_") and v is not None}


async def media_complete(litellm: Any, params: dict, kind: Kind, body: dict, ctx: CallContext,
                         as_error: Callable[[Exception], BackendError], to_dict: Callable[[Any], dict]) -> dict:
    """A transcription or image generation, in the direct transport's shape (gateway/backends/base.py)."""
    if kind == "translation":
        raise BackendError(400, "translations go to an OpenAI-compatible server over the direct transport (this "
                           "litellm has no atranslation): give the model an api_base and transport: direct",
                           retryable=False, param="model", code="model_not_supported")
    if kind == "video":
        return await video_create(litellm, _kwargs(params, body, ctx), body.get("input_reference"), as_error, to_dict)
    try:
        if kind == "image":  # the params litellm does not map for the model are its 400 (litellm.UnsupportedParamsError)
            answer = await litellm.aimage_generation(**_kwargs(params, body, ctx))
            return checked_images(_public(to_dict(answer)))
        if kind == "image_edit":
            answer = await litellm.aimage_edit(**_kwargs(params, body, ctx), **_edit_files(body))
            return checked_images(_public(to_dict(answer)))
        upload = body["file"]
        answer = await litellm.atranscription(**_kwargs(params, body, ctx),
                                              file=(upload.filename, upload.content, upload.content_type))
    except BackendError:
        raise
    except Exception as exc:
        raise as_error(exc) from None
    parsed = _public(to_dict(answer))
    if body.get("response_format") in _TEXT_FORMATS:
        raw, content_type = str(parsed.get("text", "")).encode(), "text/plain; charset=utf-8"
    else:
        raw, content_type = json.dumps(parsed).encode(), "application/json"
    usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else None
    return {"content": raw, "content_type": content_type, "duration": parsed.get("duration"), "usage": usage}


async def speech_chunks(litellm: Any, params: dict, body: dict, ctx: CallContext,
                        as_error: Callable[[Exception], BackendError]) -> AsyncIterator[dict]:
    from gateway.media_request import SPEECH_TYPES

    try:
        answer = await litellm.aspeech(**_kwargs(params, body, ctx))
    except Exception as exc:
        raise as_error(exc) from None
    content_type = SPEECH_TYPES.get(body.get("response_format") or "mp3", "application/octet-stream")
    yield {"audio": answer.content, "content_type": content_type}
