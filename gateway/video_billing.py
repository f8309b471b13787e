"""What a video costs and when it is billed: its seconds at its deployment's price a second
(gateway/video_request.py `second_price`), held of its key's (and team's) budget when it is created, at its
worst case (the model's costliest deployment), and settled when a replica first sees the job end, whichever
replica that is (the job's row says what was held, and its status moves once: storage/videos.py): a completed
job is billed its seconds, a failed one costs nothing (its hold refunded), and so does a job deleted while queued
or in progress (a delete, as a download, polls it first, so one that ended unseen is billed as it ended): the upstream
cancels it unmade, as OpenAI bills only a video it generated. Either way the video's one outcome row is
written then, under its create's request id: endpoint `video`, extra.seconds, size, status and video_id. A
job never polled again gives its hold back when the hold lapses (`VIDEO_HOLD_TTL_S`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime

from gateway.auth import Caller
from gateway.budget_holds import budget_hold, team_hold
from gateway.deployments import Deployment
from gateway.limits.base import Hold
from gateway.outcomes import OutcomeDraft
from gateway.routing import Route as Routed
from gateway.state import GatewayState
from gateway.video_request import VideoRequest, second_price

VIDEO_HOLD_TTL_S = 6 * 3600.0  # past any video job's making: a hold outlives its request
ENDED = ("completed", "failed")


async def worst_price(state: GatewayState, model: str) -> float:
    """A second's price on the model's costliest deployment: what a create holds."""
    deployments = state.pool.by_model.get(model, ())
    prices = await asyncio.to_thread(lambda: [second_price(d) for d in deployments])
    return max(prices, default=0.0)


async def admit_video(state: GatewayState, draft: OutcomeDraft, asked: VideoRequest, usd: float) -> None:
    """Take the request's rate slot and hold `usd` (its seconds' worst case) of its key's and team's budget."""
    assert draft.caller is not None
    draft.request = asked.as_media().as_request()
    server = state.settings.server
    hold = budget_hold(draft.caller, draft.request, state.routes, state.pool, draft.request_id,
                       server.request_timeout_s, server.num_retries + 1)
    if hold is not None:
        hold = replace(hold, usd=hold.usd + usd, ttl_s=max(hold.ttl_s, VIDEO_HOLD_TTL_S))
    shared = team_hold(draft.caller, hold)
    draft.admission = await state.admit(draft.caller, hold, shared)
    draft.hold, draft.team_hold = hold, shared
    draft.route = Routed(None, asked.model)


async def bill_video(state: GatewayState, caller: Caller, row: dict, video: dict,
                     deployment: Deployment | None) -> None:
    """The job's end, seen here first: its outcome row, and its hold settled with what it cost."""
    status = str(video.get("status"))
    draft = OutcomeDraft(request_id=row["request_id"], endpoint="video", caller=caller, deployment=deployment)
    made = row["created_at"].replace(tzinfo=UTC) if row["created_at"].tzinfo is None else row["created_at"]
    draft.started = time.monotonic() - max((datetime.now(UTC) - made).total_seconds(), 0.0)  # the job's time
    asked = VideoRequest(row["model"], {"model": row["model"]}, "", row["seconds"], row["size"], None)
    draft.request, draft.route = asked.as_media().as_request(), Routed(None, row["model"])
    if row["hold_usd"] > 0 or row["hold_period"] is not None:
        draft.hold = Hold(row["request_id"], row["hold_usd"], VIDEO_HOLD_TTL_S, row["hold_period"])
        draft.team_hold = team_hold(caller, draft.hold)
    seconds = _seconds(video, row["seconds"])
    draft.extra.update(video_id=row["id"], seconds=seconds, size=str(video.get("size") or row["size"]),
                       status=status)
    if status == "failed":
        error = video.get("error") if isinstance(video.get("error"), dict) else {}
        draft.fail(502, f"the video job failed: {error.get('message') or 'the upstream gave no reason'}")
        draft.extra["code"] = error.get("code") or "video_failed"
    elif status == "completed" and deployment is not None:  # deleted while running: cancelled, not made
        draft.extra_cost_usd = await asyncio.to_thread(second_price, deployment) * seconds
    state.recorder.finish(draft)
    await draft.settled()


def _seconds(video: dict, asked: int) -> int:
    """The seconds the upstream says it made (OpenAI's `seconds`, a string), else those asked."""
    said = video.get("seconds")
    return int(said) if isinstance(said, str | int) and str(said).isdigit() else asked
