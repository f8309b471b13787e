"""What follows a video's create, on the deployment that holds the job (gateway/videos.py): its status, its
content (video, thumbnail or spritesheet, streamed as the upstream sends it), its delete and its remix (a new
job made from it, on the same deployment: the source lives there). Over the direct transport these are
OpenAI's `/videos/{id}...` calls on the `api_base`; through litellm, `avideo_status`, `avideo_content` (which
reads the whole file before it answers: one chunk) and `avideo_remix`. This litellm has no video delete: a
delete on a litellm deployment is a 400 that says to use an OpenAI-compatible `api_base`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from gateway.audio_upload import UploadedFile
from gateway.backends.base import Backend, BackendError

CONTENT_CHUNK_BYTES = 256 * 1024
Content = tuple[str, AsyncIterator[bytes]]  # (content type, the bytes as they come)


def _missing(call: str) -> BackendError:
    return BackendError(400, f"this litellm has no {call}: give the model an api_base and transport: direct to "
                        "reach an OpenAI-compatible /videos", retryable=False, param="model",
                        code="model_not_supported")


def _litellm_kwargs(params: dict, timeout_s: float) -> dict:
    return {**{k: v for k, v in params.items() if k != "model"}, "timeout": timeout_s}


async def video_create(litellm: Any, kwargs: dict, reference: UploadedFile | None,
                       as_error: Callable[[Exception], BackendError], to_dict: Callable[[Any], dict]) -> dict:
    """A video's create through litellm's `avideo_generation`, its reference image as bytes."""
    from gateway.backends.openai_media import checked_video

    if not hasattr(litellm, "avideo_generation"):
        raise _missing("avideo_generation")
    if reference is not None:
        kwargs["input_reference"] = reference.content  # litellm names and types it itself, from its bytes
    try:
        answer = await litellm.avideo_generation(**kwargs)
    except Exception as exc:
        raise as_error(exc) from None
    return checked_video({k: v for k, v in to_dict(answer).items() if not k.startswith("_")})


async def _http_json(backend: Any, method: str, path: str, timeout_s: float, body: dict | None = None) -> dict:
    from gateway.backends.answers import strict_json
    from gateway.backends.openai_http import _connection_error, _error_from_response

    try:
        async with backend.session.request(method, backend.api_base + path, json=body,
                                           timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            status, raw = response.status, await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _connection_error(exc, started=False) from None
    if status != 200:
        raise _error_from_response(status, raw)
    try:
        answer = strict_json(raw)
    except ValueError:
        raise BackendError(502, "upstream sent invalid JSON", retryable=False, code="bad_upstream_response") from None
    if not isinstance(answer, dict):
        raise BackendError(502, "upstream's video answer is not an object", retryable=False,
                           code="bad_upstream_response")
    return answer


def _litellm_of(backend: Backend) -> tuple[Any, dict, Callable[[Exception], BackendError], Callable[[Any], dict]] | None:
    from gateway.backends.litellm_backend import LitellmBackend, _as_backend_error, _litellm, _to_dict

    if not isinstance(backend, LitellmBackend):
        return None
    return _litellm(), backend.params, _as_backend_error, _to_dict


async def _through_litellm(backend: Backend, call: str, timeout_s: float, **kwargs: Any) -> Any:
    found = _litellm_of(backend)
    assert found is not None
    litellm, params, as_error, to_dict = found
    if not hasattr(litellm, call):
        raise _missing(call)
    try:
        answer = await getattr(litellm, call)(**kwargs, **_litellm_kwargs(params, timeout_s))
    except Exception as exc:
        raise as_error(exc) from None
    return answer if isinstance(answer, bytes | bytearray) else to_dict(answer)


async def retrieve(backend: Backend, video_id: str, timeout_s: float) -> dict:
    if _litellm_of(backend) is not None:
        return await _through_litellm(backend, "avideo_status", timeout_s, video_id=video_id)
    return await _http_json(backend, "GET", f"/videos/{video_id}", timeout_s)


async def remix(backend: Backend, video_id: str, prompt: str, timeout_s: float) -> dict:
    from gateway.backends.openai_media import checked_video

    if _litellm_of(backend) is not None:
        return checked_video(await _through_litellm(backend, "avideo_remix", timeout_s, video_id=video_id,
                                                    prompt=prompt))
    return checked_video(await _http_json(backend, "POST", f"/videos/{video_id}/remix", timeout_s, {"prompt": prompt}))


def check_deletable(backend: Backend) -> None:
    """Raises where the backend has no video delete (litellm's)."""
    if _litellm_of(backend) is not None:
        raise _missing("video delete")


async def delete(backend: Backend, video_id: str, timeout_s: float) -> dict:
    check_deletable(backend)
    return await _http_json(backend, "DELETE", f"/videos/{video_id}", timeout_s)


async def content(backend: Backend, video_id: str, variant: str, timeout_s: float) -> Content:
    """The content's type and bytes: the upstream's status is checked before the first byte goes out."""
    if _litellm_of(backend) is not None:
        raw = await _through_litellm(backend, "avideo_content", timeout_s, video_id=video_id, variant=variant)
        return "video/mp4" if variant == "video" else "application/octet-stream", _once(bytes(raw))
    from gateway.backends.openai_http import _connection_error, _error_from_response

    url = f"{backend.api_base}/videos/{video_id}/content"  # type: ignore[attr-defined]
    try:
        response = await backend.session.get(url, params={"variant": variant},  # type: ignore[attr-defined]
                                             timeout=aiohttp.ClientTimeout(total=timeout_s))
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _connection_error(exc, started=False) from None
    if response.status != 200:
        raw = await response.read()
        response.release()
        raise _error_from_response(response.status, raw)
    return response.headers.get("content-type", "application/octet-stream"), _chunks(response)


async def _once(raw: bytes) -> AsyncIterator[bytes]:
    yield raw


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    from gateway.backends.openai_http import _connection_error

    try:
        async for chunk in response.content.iter_chunked(CONTENT_CHUNK_BYTES):
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _connection_error(exc, started=True) from None
    finally:
        response.release()
