"""How the fake upstream (tests/gateway/upstream.py) answers OpenAI's Videos API, each job's content derived
from what it was sent, so a test knows it in advance and proves the bytes arrived intact:

  POST   /v1/videos                 a job, `queued` (JSON, or multipart with an `input_reference` image)
  GET    /v1/videos/{id}            each poll moves it on: in_progress (33%), in_progress (66%), completed;
                                    `[job:fail]` in the prompt: failed at the end, with an error;
                                    `[job:done]`: completed already in the create's answer
  GET    /v1/videos/{id}/content    `video_bytes(prompt, reference, variant)`: `[mb:N]` in the prompt, N MiB
                                    (else 64 KiB), streamed in 256 KiB chunks; a 400 before it is completed
  POST   /v1/videos/{id}/remix      a new job from it, its prompt the remix's
  DELETE /v1/videos/{id}            gone

The create's directives apply ([fail:500], [fail:503@a], [delay:2]), and the admin fail mode to every call."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tests.gateway.upstream_answers import Upstream, error_response
from tests.gateway.upstream_media import _faulted

POLLS_TO_END = 3
_MIB = re.compile(r"\[mb:(\d+)\]")
CHUNK = 256 * 1024
TYPES = {"video": "video/mp4", "thumbnail": "image/webp", "spritesheet": "image/jpeg"}


def video_bytes(prompt: str, reference: bytes | None = None, variant: str = "video") -> bytes:
    asked = _MIB.search(prompt)
    size = int(asked.group(1)) * 1024 * 1024 if asked else 64 * 1024
    seed = hashlib.sha256(f"{variant}:{prompt}".encode() + hashlib.sha256(reference or b"").digest()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _jobs(upstream: Upstream) -> dict[str, dict]:
    if not hasattr(upstream, "videos"):
        upstream.videos = {}  # type: ignore[attr-defined]
    return upstream.videos  # type: ignore[attr-defined]


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _new_job(upstream: Upstream, prompt: str, model: str, seconds: str, size: str, reference: bytes | None,
             remixed_from: str | None = None) -> dict:
    jobs = _jobs(upstream)
    job_id = f"video_{upstream.name}{len(jobs)}_" + hashlib.sha256(f"{upstream.name}{len(jobs)}{prompt}".encode()).hexdigest()[:12]
    job = {"id": job_id, "object": "video", "model": model, "status": "queued", "progress": 0,
           "created_at": 1_700_000_000 + len(jobs), "completed_at": None, "expires_at": None, "error": None,
           "prompt": prompt, "remixed_from_video_id": remixed_from, "seconds": seconds, "size": size,
           "_polls": 0, "_reference": reference}
    jobs[job_id] = job
    return job


async def create_video(upstream: Upstream, request: Any) -> Any:
    from starlette.datastructures import UploadFile
    from starlette.responses import JSONResponse

    upstream.requests += 1
    reference = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("input_reference")
        reference = await upload.read() if isinstance(upload, UploadFile) else None
        body: dict = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
        body["input_reference"] = None if reference is None else {"filename": upload.filename, "bytes": len(reference)}
    else:
        body = await request.json()
    upstream.bodies = [*upstream.bodies[-49:], body]
    if not isinstance(body.get("prompt"), str):
        return error_response(400, "prompt is required")
    if (fault := await _faulted(upstream, body["prompt"])) is not None:
        return fault
    job = _new_job(upstream, body["prompt"], str(body.get("model")), str(body.get("seconds", "4")),
                   str(body.get("size", "720x1280")), reference)
    if "[job:done]" in body["prompt"]:  # a provider that answers a short job when it is made
        job.update(status="completed", progress=100, completed_at=job["created_at"])
    return JSONResponse(_public(job))


def _found(upstream: Upstream, video_id: str) -> dict | Any:
    if upstream.fail_status:
        return error_response(upstream.fail_status, f"injected {upstream.fail_status} from {upstream.name}")
    job = _jobs(upstream).get(video_id)
    return job if job is not None else error_response(404, f"no video {video_id}")


async def retrieve_video(upstream: Upstream, video_id: str) -> Any:
    from starlette.responses import JSONResponse

    job = _found(upstream, video_id)
    if not isinstance(job, dict):
        return job
    if job["status"] in ("queued", "in_progress"):
        job["_polls"] += 1
        job["progress"] = min(100, job["_polls"] * 100 // POLLS_TO_END)
        job["status"] = "in_progress"
        if job["_polls"] >= POLLS_TO_END:
            failing = "[job:fail]" in job["prompt"]
            job["status"] = "failed" if failing else "completed"
            job["completed_at"] = job["created_at"] + 60
            if failing:
                job["error"] = {"code": "video_generation_failed", "message": "the render failed"}
    return JSONResponse(_public(job))


async def video_content(upstream: Upstream, video_id: str, variant: str) -> Any:
    from starlette.responses import StreamingResponse

    job = _found(upstream, video_id)
    if not isinstance(job, dict):
        return job
    if job["status"] != "completed":
        return error_response(400, f"video {video_id} is {job['status']}, not completed")
    content = video_bytes(job["prompt"], job["_reference"], variant)

    async def chunks() -> Any:
        for start in range(0, len(content), CHUNK):
            yield content[start:start + CHUNK]

    return StreamingResponse(chunks(), media_type=TYPES.get(variant, "application/octet-stream"))


async def remix_video(upstream: Upstream, video_id: str, body: Any) -> Any:
    from starlette.responses import JSONResponse

    job = _found(upstream, video_id)
    if not isinstance(job, dict):
        return job
    upstream.bodies = [*upstream.bodies[-49:], {"remix": video_id, **(body or {})}]
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        return error_response(400, "prompt is required")
    new = _new_job(upstream, body["prompt"], job["model"], job["seconds"], job["size"], None, video_id)
    return JSONResponse(_public(new))


async def delete_video(upstream: Upstream, video_id: str) -> Any:
    from starlette.responses import JSONResponse

    job = _found(upstream, video_id)
    if not isinstance(job, dict):
        return job
    del _jobs(upstream)[video_id]
    return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})
