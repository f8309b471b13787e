"""OpenAI's audio and image endpoints (bodies: gateway/media_request.py), answered by models marked with
litellm's `model_info.mode` for them, over the direct transport (an OpenAI-compatible `api_base`:
gateway/backends/openai_media.py) or litellm (gateway/backends/litellm_media.py), retried and balanced over
the model's deployments as any call (never hedged: an upload or an image is not made twice):

    POST /v1/audio/transcriptions   mode: audio_transcription   the transcript as the upstream wrote it
    POST /v1/audio/translations     mode: audio_transcription   (json, text, srt, verbose_json, vtt)
    POST /v1/audio/speech           mode: audio_speech          the audio, streamed as the upstream sends it
    POST /v1/images/generations     mode: image_generation      the upstream's JSON (url or b64_json)
    POST /v1/images/edits           mode: image_generation      likewise (gpt-image-1 and DALL-E 2 do both)

A request is admitted, limited and billed as moderations are (gateway/moderation.py), with its units at the
model's unit prices (gateway/media_prices.py) held of its budget before the call and settled after: the row
says `endpoint` (transcription, translation, speech, image, image_edit), its cost, and `extra.seconds`, `characters` or
`images`; tokens where the provider reports them. An upload (an edit's images and mask
together) is capped at `server.max_upload_bytes` (gateway/audio_upload.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engine.server.errors import bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway import tracing
from gateway.audio_upload import audio_file, read_form, uploaded_files, wav_seconds
from gateway.backends.base import BackendError, CallContext, Kind
from gateway.budget_holds import budget_hold, team_hold
from gateway.config import MEDIA_PATHS
from gateway.media_prices import UNIT, answered_cost, answered_units, worst_cost
from gateway.media_request import (
    MAX_EDIT_IMAGES,
    MediaRequest,
    parse_image,
    parse_image_edit,
    parse_speech,
    parse_transcription,
)
from gateway.outcomes import OutcomeDraft
from gateway.own_endpoints import answered
from gateway.routing import Route as Routed
from gateway.serving import response_headers, unless_disconnected
from gateway.state import GatewayState

MODE = {"transcription": "audio_transcription", "translation": "audio_transcription", "speech": "audio_speech",
        "image": "image_generation", "image_edit": "image_generation", "video": "video_generation"}  # videos: gateway/videos.py


def _endpoint(kind: Kind) -> Any:
    async def endpoint(request: Request) -> Response:
        state: GatewayState = request.app.state.pitstop
        draft = OutcomeDraft(endpoint=kind)
        if state.tracing is not None:
            draft.trace = tracing.request_started(state.tracing, request, kind)
        return await answered(request, state, draft, None, lambda r, s, d, _: _serve(kind, r, s, d))
    return endpoint


ROUTES = [Route("/v1/audio/transcriptions", _endpoint("transcription"), methods=["POST"]),
          Route("/v1/audio/translations", _endpoint("translation"), methods=["POST"]),
          Route("/v1/audio/speech", _endpoint("speech"), methods=["POST"]),
          Route("/v1/images/generations", _endpoint("image"), methods=["POST"]),
          Route("/v1/images/edits", _endpoint("image_edit"), methods=["POST"])]


def check_media_model(state: GatewayState, kind: Kind, model: str) -> None:
    """Nothing for a model of the endpoint's mode (listed, or a wildcard's name); a 404 for a name the gateway
    does not serve, a 400 for a route group or a model of another mode."""
    mode = MODE[kind]
    routes = state.routes
    served = ", ".join(sorted(routes.media_models[mode])) or "none is configured"
    if model in routes.media_models[mode]:
        return
    if model in routes.groups:
        raise bad_request(f"{model!r} is a route group, which routes chats; send {MEDIA_PATHS[mode]} a model by name "
                          f"(models marked mode: {mode}: {served})", "model", "model_not_supported")
    if not routes.adopt(model):
        raise not_found(f"the model {model!r} does not exist; models marked mode: {mode}: {served}", "model",
                        "model_not_found")
    if model not in routes.media_models[mode]:
        raise bad_request(f"the model {model!r} is not marked model_info.mode: {mode}, so it does not serve "
                          f"{MEDIA_PATHS[mode]} (models that do: {served})", "model", "model_not_supported")


async def _read(kind: Kind, request: Request, state: GatewayState) -> MediaRequest:
    server = state.settings.server
    if kind in ("speech", "image"):
        raw = await read_json(request, server.max_body_bytes)
        return parse_speech(raw) if kind == "speech" else parse_image(raw)
    form = await read_form(request, server.max_upload_bytes, MAX_EDIT_IMAGES + 1 if kind == "image_edit" else 1)
    try:
        if kind == "image_edit":
            masks = await uploaded_files(form, "mask", "a PNG whose transparent pixels mark where to edit")
            if len(masks) > 1:
                raise bad_request("'mask' takes one file", "mask", "invalid_value")
            images = await uploaded_files(form, "image", "the image to edit")
            return parse_image_edit(form, images, masks[0] if masks else None)
        file = await audio_file(form)
        return parse_transcription(form, file, kind, wav_seconds(file.content))
    finally:
        await form.close()


async def _serve(kind: Kind, request: Request | None, state: GatewayState, draft: OutcomeDraft) -> Response:
    assert request is not None
    draft.caller = await state.auth.authenticate(request.headers)
    asked = await _read(kind, request, state)
    draft.caller.check_model(asked.model)
    check_media_model(state, kind, asked.model)
    draft.request = asked.as_request()
    server = state.settings.server
    hold = budget_hold(draft.caller, draft.request, state.routes, state.pool, draft.request_id,
                       server.request_timeout_s, server.num_retries + 1)
    if hold is not None:  # its units' worst case on the model's costliest deployment, beside any tokens'
        hold = replace(hold, usd=hold.usd + await worst_cost(state.pool, asked))
    shared = team_hold(draft.caller, hold)
    draft.admission = await state.admit(draft.caller, hold, shared)
    draft.hold, draft.team_hold = hold, shared
    draft.route = tracing.routed(draft.trace, lambda parsed: Routed(None, parsed.model), draft.request)
    ctx = CallContext(draft.request_id, priority=draft.caller.effective_priority(asked.priority),
                      timeout_s=server.request_timeout_s, trace=draft.trace, estimated_tokens=0)
    if kind == "speech":
        return await _speak(request, state, draft, asked, ctx)
    work = state.dispatcher.complete(asked.model, kind, asked.body, ctx, sent=draft.sending)
    answer, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)
    await _bill(draft, asked, answer)
    state.recorder.finish(draft)
    await draft.settled()
    if kind in ("image", "image_edit"):
        return SafeJSONResponse(answer, headers=response_headers(draft))
    return Response(answer["content"], media_type=answer["content_type"] or "application/json",
                    headers=response_headers(draft))


def _reported_usage(answer: dict) -> dict[str, int]:
    """The tokens the provider reports (OpenAI's audio and image `usage`: input_tokens, output_tokens), as the
    row's usage; none reported is none used (whisper, tts-1, DALL-E bill by unit)."""
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    prompt = prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else 0
    completion = completion if isinstance(completion, int) and not isinstance(completion, bool) else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _bill(draft: OutcomeDraft, asked: MediaRequest, answer: dict) -> None:
    """The row's tokens, units and their cost (in extra_cost_usd, added to the tokens' by OutcomeRecorder)."""
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    if usage.get("type") == "duration" and answer.get("duration") is None:  # OpenAI's whisper usage
        answer = {**answer, "duration": usage.get("seconds")}
    draft.usage = _reported_usage(answer)
    units, estimated = answered_units(asked, answer)
    draft.extra[UNIT[asked.kind]] = units
    if estimated:
        draft.extra["duration_estimated"] = True
    if asked.kind in ("image", "image_edit") and isinstance(size := asked.body.get("size"), str):
        draft.extra["size"] = size
    assert draft.deployment is not None
    draft.extra_cost_usd += await answered_cost(draft.deployment, asked, units)


async def _speak(request: Request, state: GatewayState, draft: OutcomeDraft, asked: MediaRequest,
                 ctx: CallContext) -> Response:
    """The speech's audio as it arrives; billed for its characters once the upstream started answering (a
    client that leaves meanwhile is charged too), its row finished when the audio ends."""
    work = state.dispatcher.stream(asked.model, "speech", asked.body, ctx, sent=draft.sending)
    chunks, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)
    first = await anext(chunks)
    draft.ttft_s = time.monotonic() - draft.started
    await _bill(draft, asked, {})
    draft.extra["audio_bytes"] = 0

    async def audio() -> AsyncIterator[bytes]:
        ended = False
        try:
            async with aclosing(chunks):  # the upstream's connection and admission slot let go however it ends
                draft.extra["audio_bytes"] += len(first["audio"])
                yield first["audio"]
                async for chunk in chunks:
                    draft.extra["audio_bytes"] += len(chunk["audio"])
                    yield chunk["audio"]
            ended = True
        except BackendError as exc:  # the upstream broke mid-audio: the client's answer is cut, the row says so
            draft.fail(exc.status, exc.message)
            raise  # the connection is cut: the client sees the audio did not end
        except BaseException:
            draft.fail(499, "the client disconnected", kind="aborted")
            raise
        finally:
            state.recorder.finish(draft)
        if ended:  # before the answer's end goes out, as every endpoint settles
            await draft.settled()

    return StreamingResponse(audio(), media_type=first.get("content_type") or "application/octet-stream",
                             headers=response_headers(draft))
