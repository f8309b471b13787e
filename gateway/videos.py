"""OpenAI's Videos API (Sora) through the gateway, answered by models marked `model_info.mode:
video_generation`, over the direct transport (an OpenAI-compatible `api_base`'s /videos) or litellm
(`avideo_generation` & co.: gateway/backends/video_calls.py):

    POST   /v1/videos                  create a job (JSON, or multipart with an `input_reference` image):
                                       retried and balanced over the model's deployments until one accepts it
    GET    /v1/videos                  the caller's own jobs, OpenAI's list shape (after, limit, order)
    GET    /v1/videos/{id}             its status, from the deployment that holds it (an ended job: as kept)
    GET    /v1/videos/{id}/content     its video, thumbnail or spritesheet (?variant=), streamed as it comes
    DELETE /v1/videos/{id}             deleted there and here
    POST   /v1/videos/{id}/remix       a new job from it, on the same deployment (never retried elsewhere)

Each job the gateway made is a row (storage/videos.py: the upstream's id, the deployment that holds it, whose
it is, model, seconds, size, status), so every replica reaches the same deployment for it and another key's
job is a 404. Billing: gateway/video_billing.py. The database away: a create is a 503 before anything is
asked of an upstream (a job the gateway could not find again would be made and paid for); so are the calls
that read the row. Where it goes away between the upstream's accept and the row, the insert is retried, then
the job is deleted on its upstream and the create is the same 503 (logged with the job's id where even the
delete fails). An upstream failing a call after the create is a 502 (503, 504 as it said) in OpenAI's
shape, the job's row untouched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engine.server.errors import APIError, bad_request, not_found
from engine.server.json_body import read_json
from engine.server.json_out import SafeJSONResponse
from gateway import tracing
from gateway.audio_upload import read_form, uploaded_files
from gateway.auth import Caller
from gateway.backends import video_calls
from gateway.backends.base import BackendError, CallContext
from gateway.db_calls import db_call_or_503
from gateway.deployments import Deployment
from gateway.media import check_media_model
from gateway.outcomes import OutcomeDraft
from gateway.own_endpoints import answered
from gateway.serving import response_headers, unless_disconnected
from gateway.state import GatewayState
from gateway.video_billing import ENDED, admit_video, bill_video, worst_price
from gateway.video_request import VARIANTS, VideoRequest, parse_remix, parse_video
from storage.videos import VideoStore

_db = db_call_or_503("video jobs", "video_store_unavailable")
_log = logging.getLogger(__name__)
_PUT_RETRY_DELAYS_S = (0.1, 0.4)  # then one last try; a failure after the upstream accepted cancels the job there


def _state(request: Request) -> GatewayState:
    return request.app.state.pitstop


def _store(state: GatewayState) -> VideoStore:
    assert state.video_store is not None, "build_state gives every gateway its video store"
    return state.video_store


async def _read(request: Request, state: GatewayState) -> VideoRequest:
    server = state.settings.server
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return parse_video(await read_json(request, server.max_body_bytes), None)
    form = await read_form(request, server.max_upload_bytes)
    try:
        references = await uploaded_files(form, "input_reference", "an image that starts the video")
        return parse_video(form, references[0] if references else None)
    finally:
        await form.close()


def _context(state: GatewayState, draft: OutcomeDraft, priority: float | None) -> CallContext:
    assert draft.caller is not None
    return CallContext(draft.request_id, priority=draft.caller.effective_priority(priority),
                       timeout_s=state.settings.server.request_timeout_s, trace=draft.trace)


async def _kept(state: GatewayState, draft: OutcomeDraft, video: dict, model: str, seconds: int,
                size: str) -> Response:
    """Keep the job the upstream accepted, and answer it."""
    assert draft.caller is not None and draft.deployment is not None
    caller, hold = draft.caller, draft.hold
    row = {"id": video["id"], "api_key_id": caller.key_id, "team_id": caller.team.team_id if caller.team else None,
           "deployment": draft.deployment.name, "model": model, "seconds": seconds,
           "size": str(video.get("size") or size), "status": video["status"], "request_id": draft.request_id,
           "hold_usd": hold.usd if hold is not None else 0.0, "hold_period": hold.period if hold is not None else None,
           "video": video}
    try:
        await _kept_row(state, row)
    except APIError:
        await _cancel_unkept(state, draft.deployment, video["id"])
        raise
    if video["status"] in ENDED:  # made at once: billed now
        await bill_video(state, caller, await _db(_store(state).get, video["id"]), video, draft.deployment)
    return SafeJSONResponse(video, headers=response_headers(draft))


async def _kept_row(state: GatewayState, row: dict) -> None:
    """The job's row, a database blip between the upstream's accept and the insert retried briefly."""
    for delay_s in _PUT_RETRY_DELAYS_S:
        try:
            return await asyncio.to_thread(_store(state).put, row)
        except Exception:
            await asyncio.sleep(delay_s)
    await _db(_store(state).put, row)  # the last try: its failure is the 503


async def _cancel_unkept(state: GatewayState, deployment: Deployment, video_id: str) -> None:
    """A job the gateway could not keep is deleted where it was made, so it is neither made nor paid for
    unseen; where that fails too it is logged with its id, for an operator to cancel."""
    try:
        await video_calls.delete(deployment.backend, video_id, state.settings.server.request_timeout_s)
    except Exception as exc:  # the 503 still goes out: the client is told its job was not kept
        _log.error("video %s made on deployment %s could not be kept (database away) nor cancelled there: %s",
                   video_id, deployment.name, exc)
    else:
        _log.warning("video %s made on deployment %s was cancelled there: the database could not keep it",
                     video_id, deployment.name)


async def _create(request: Request | None, state: GatewayState, draft: OutcomeDraft, _: object) -> Response:
    assert request is not None
    draft.caller = await state.auth.authenticate(request.headers)
    asked = await _read(request, state)
    draft.caller.check_model(asked.model)
    check_media_model(state, "video", asked.model)
    await _db(_store(state).ping)  # before the upstream makes a job the gateway could not keep
    await admit_video(state, draft, asked, await worst_price(state, asked.model) * asked.seconds)
    work = state.dispatcher.complete(asked.model, "video", asked.body, _context(state, draft, asked.priority),
                                     sent=draft.sending)
    video, dispatched = await unless_disconnected(request, work)
    draft.answered_by(dispatched)
    return await _kept(state, draft, video, asked.model, asked.seconds, asked.size)


async def _owned(state: GatewayState, caller: Caller, video_id: str) -> dict:
    row = await _db(_store(state).get, video_id)
    if row is None or row["api_key_id"] != caller.key_id:
        raise not_found(f"no video {video_id!r} (unknown, or made with another API key)", None, "video_not_found")
    return row


def _holder(state: GatewayState, row: dict) -> Deployment:
    for deployment in state.pool.by_model.get(row["model"], ()):
        if deployment.name == row["deployment"]:
            return deployment
    raise APIError(503, f"video {row['id']!r} is held by deployment {row['deployment']!r}, which this gateway no "
                   "longer has (its config changed)", code="video_deployment_unavailable")


async def _remix(request: Request | None, state: GatewayState, draft: OutcomeDraft, _: object) -> Response:
    assert request is not None
    draft.caller = caller = await state.auth.authenticate(request.headers)
    source = await _owned(state, caller, request.path_params["video_id"])
    prompt = parse_remix(await read_json(request, state.settings.server.max_body_bytes))
    deployment = _holder(state, source)
    asked = VideoRequest(source["model"], {"model": source["model"], "prompt": prompt}, prompt, source["seconds"],
                         source["size"], None)
    await admit_video(state, draft, asked, await worst_price(state, source["model"]) * asked.seconds)
    draft.sending(deployment)
    work = video_calls.remix(deployment.backend, source["id"], prompt, state.settings.server.request_timeout_s)
    video = await unless_disconnected(request, work)
    draft.deployment, draft.attempts = deployment, 1
    return await _kept(state, draft, video, source["model"], source["seconds"], source["size"])


def _billed(serve: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that makes a job: admitted, limited, and failed as the other media endpoints are."""
    async def endpoint(request: Request) -> Response:
        state = _state(request)
        draft = OutcomeDraft(endpoint="video")
        if state.tracing is not None:
            draft.trace = tracing.request_started(state.tracing, request, "video")
        return await answered(request, state, draft, None, serve)
    return endpoint


def _upstream_error(exc: BackendError) -> APIError:
    """A call after the create that the upstream failed: its 4xx as it said, a 5xx as a 502 (503 and 504 kept)."""
    status = exc.status if exc.status < 500 or exc.status in (502, 503, 504) else 502
    return APIError(status, f"the upstream holding the video: {exc.message}", exc.param, exc.code)


def _job(serve: Callable[[Request, GatewayState, Caller], Awaitable[Response]]
         ) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state = _state(request)
        caller = await state.auth.authenticate(request.headers)
        try:
            return await serve(request, state, caller)
        except BackendError as exc:
            raise _upstream_error(exc) from None
    return endpoint


async def _retrieve(request: Request, state: GatewayState, caller: Caller) -> Response:
    row = await _owned(state, caller, request.path_params["video_id"])
    if row["status"] in ENDED:  # billed, and no longer changing
        return SafeJSONResponse(row["video"])
    return SafeJSONResponse(await _refreshed(state, caller, row, _holder(state, row)))


async def _refreshed(state: GatewayState, caller: Caller, row: dict, deployment: Deployment) -> dict:
    """The job as its upstream says now, its new status kept; its end, where this replica sees it first, billed."""
    video = await video_calls.retrieve(deployment.backend, row["id"], state.settings.server.request_timeout_s)
    video = {**video, "id": row["id"]}  # as its create answered it (litellm encodes its ids again on each read)
    changed = video != row["video"] and isinstance(video.get("status"), str)
    if changed and await _db(_store(state).advance, row["id"], video) and video["status"] in ENDED:
        await bill_video(state, caller, row, video, deployment)  # the first to see it end bills it
    return video


async def _content(request: Request, state: GatewayState, caller: Caller) -> Response:
    variant = request.query_params.get("variant", "video")
    if variant not in VARIANTS:
        raise bad_request(f"'variant' must be one of {', '.join(VARIANTS)}, not {variant!r}", "variant",
                          "invalid_value")
    row = await _owned(state, caller, request.path_params["video_id"])
    deployment = _holder(state, row)
    if row["status"] not in ENDED:  # its end not seen yet: a video downloaded unpolled is billed, not let lapse
        await _refreshed(state, caller, row, deployment)
    content_type, chunks = await video_calls.content(deployment.backend, row["id"], variant,
                                                     state.settings.server.request_timeout_s)
    return StreamingResponse(chunks, media_type=content_type)


async def _delete(request: Request, state: GatewayState, caller: Caller) -> Response:
    row = await _owned(state, caller, request.path_params["video_id"])
    deployment = _holder(state, row)
    timeout_s = state.settings.server.request_timeout_s
    video_calls.check_deletable(deployment.backend)  # before the poll: a delete that cannot happen asks nothing
    # A running job may have ended unseen (never polled through the gateway): ask, so a video made is billed.
    last = row["video"] if row["status"] in ENDED else await _refreshed(state, caller, row, deployment)
    answer = await video_calls.delete(deployment.backend, row["id"], timeout_s)
    cancelled = {**last, "status": "deleted"}
    if await _db(_store(state).advance, row["id"], cancelled):  # still running: cancelled unmade, hold refunded
        await bill_video(state, caller, row, cancelled, deployment)
    await _db(_store(state).delete, row["id"])
    return SafeJSONResponse({"id": row["id"], "object": "video.deleted", "deleted": True, **answer})


async def _list(request: Request, state: GatewayState, caller: Caller) -> Response:
    from gateway.responses_api import page_params

    params = page_params(request.query_params)
    rows, more = await _db(_store(state).page, caller.key_id, params.limit, params.descending, params.after)
    data = [row["video"] for row in rows]
    return SafeJSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more})


ROUTES = [Route("/v1/videos", _billed(_create), methods=["POST"]),
          Route("/v1/videos", _job(_list), methods=["GET"]),
          Route("/v1/videos/{video_id}", _job(_retrieve), methods=["GET"]),
          Route("/v1/videos/{video_id}", _job(_delete), methods=["DELETE"]),
          Route("/v1/videos/{video_id}/content", _job(_content), methods=["GET"]),
          Route("/v1/videos/{video_id}/remix", _billed(_remix), methods=["POST"])]
