"""OpenAI's Files API, as the Batch API needs it: `/v1/files` uploads (multipart, as the SDKs send them),
retrieves, lists, downloads and deletes files. A file's content is kept in its database row
(storage/files.py), so every replica serves it; files belong to the API key that uploaded them (another
key's is a 404). A batch's output and error files are files too. As at OpenAI, a file is kept until
deleted unless it expires: `expires_after` on upload (1 hour to 30 days after its creation; a `batch`
file's default is 30 days), a batch's `output_expires_after` for what it writes. An expired file is gone
at once (a 404) and its row is deleted at the next hourly sweep. Deleting a file takes it out of every
vector store too, as at OpenAI (an expired one stays in them, its text already chunked)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine.server.errors import bad_request, not_found
from engine.server.json_out import SafeJSONResponse
from gateway.db_calls import db_call_or_503
from gateway.periodic import Periodic
from gateway.responses_api import page_params
from storage.files import FileStore

MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit on a batch's input file
PURPOSES = ("batch", "batch_output", "user_data", "assistants", "fine-tune", "evals", "vision")
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 86_400  # OpenAI's bounds on `expires_after.seconds`
DEFAULT_EXPIRY_S = {"batch": MAX_EXPIRY_S}  # by purpose; others are kept until deleted
SWEEP_INTERVAL_S = 3600.0

log = logging.getLogger("pitstop.gateway")


def public(row: Mapping[str, Any]) -> dict:
    """The File object the API answers."""
    expires_at = row.get("expires_at")
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"].timestamp()),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed",
            "expires_at": None if expires_at is None else int(expires_at.timestamp()), "status_details": None}


def expiry_seconds(value: Any, param: str) -> int | None:
    """`{"anchor": "created_at", "seconds": n}` (n from 3600 to 2592000) as n; None when not given."""
    if value is None:
        return None
    seconds = value.get("seconds") if isinstance(value, dict) else None
    if isinstance(seconds, str) and seconds.isdigit():  # a multipart form's field is text
        seconds = int(seconds)
    if not isinstance(value, dict) or value.get("anchor") != "created_at" or isinstance(seconds, bool) \
            or not isinstance(seconds, int) or not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise bad_request(f"'{param}' must be {{\"anchor\": \"created_at\", \"seconds\": {MIN_EXPIRY_S} to "
                          f"{MAX_EXPIRY_S}}}", param, "invalid_value")
    return seconds


@dataclass
class Files:
    store: FileStore
    _sweeper: Periodic | None = None

    async def put(self, content: bytes, filename: str, purpose: str, key_id: str | None,
                  expires_after_s: int | None = None) -> dict:
        now = datetime.now(UTC)
        expires_after_s = DEFAULT_EXPIRY_S.get(purpose) if expires_after_s is None else expires_after_s
        row = {"id": "file-" + uuid.uuid4().hex, "created_at": now, "api_key_id": key_id, "filename": filename,
               "purpose": purpose, "bytes": len(content), "content": content,
               "expires_at": None if expires_after_s is None else now + timedelta(seconds=expires_after_s)}
        await _db(self.store.put, row)
        return public(row)

    def start(self) -> None:
        self._sweeper = Periodic(self._sweep, SWEEP_INTERVAL_S, "deleting expired files")
        self._sweeper.start()

    async def _sweep(self) -> None:
        if purged := await asyncio.to_thread(self.store.purge, datetime.now(UTC)):
            log.info("deleted %d expired files", purged)

    async def close(self) -> None:
        if self._sweeper is not None:
            await self._sweeper.close()

    async def owned(self, file_id: str, key_id: str | None, param: str | None = None) -> dict:
        row = await _db(self.store.get, file_id)
        if row is None or row["api_key_id"] != key_id:  # another key's: as if there were none
            raise not_found(f"no file {file_id!r} (unknown, deleted, or uploaded with another API key)", param,
                            "file_not_found")
        return row

    async def content(self, file_id: str, key_id: str | None) -> bytes:
        await self.owned(file_id, key_id)
        content = await _db(self.store.content, file_id)
        if content is None:  # deleted meanwhile
            raise not_found(f"no file {file_id!r}", None, "file_not_found")
        return content


_db = db_call_or_503("files", "file_store_unavailable")


def _files(request: Request) -> Files:
    return request.app.state.pitstop.files


async def _key(request: Request) -> str | None:
    return (await request.app.state.pitstop.auth.authenticate(request.headers)).key_id


async def upload_file(request: Request) -> Response:
    """POST /v1/files: multipart/form-data with `file` and `purpose`."""
    key_id = await _key(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise bad_request("upload the file as multipart/form-data, with fields 'file' and 'purpose'", "file")
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        expires = {"anchor": form.get("expires_after[anchor]"), "seconds": form.get("expires_after[seconds]")} \
            if "expires_after[anchor]" in form or "expires_after[seconds]" in form else None
        expires_after_s = expiry_seconds(expires, "expires_after")
        if not isinstance(upload, UploadFile):
            raise bad_request("'file' must be a file", "file", "missing_required_parameter")
        if purpose not in PURPOSES:
            raise bad_request(f"'purpose' must be one of {', '.join(PURPOSES)}", "purpose", "invalid_value")
        content = await upload.read(MAX_FILE_BYTES + 1)
        if len(content) > MAX_FILE_BYTES:
            raise bad_request(f"the file is over {MAX_FILE_BYTES} bytes", "file", "file_too_large")
        return SafeJSONResponse(await _files(request).put(content, upload.filename or "upload", str(purpose), key_id,
                                                          expires_after_s))


async def retrieve_file(request: Request) -> Response:
    return SafeJSONResponse(public(await _files(request).owned(request.path_params["file_id"], await _key(request))))


async def file_content(request: Request) -> Response:
    content = await _files(request).content(request.path_params["file_id"], await _key(request))
    return Response(content, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    files, key_id, file_id = _files(request), await _key(request), request.path_params["file_id"]
    await files.owned(file_id, key_id)
    await _db(files.store.delete, file_id)
    await request.app.state.pitstop.vector_stores.forget_file(file_id)  # and from every vector store
    return SafeJSONResponse({"id": file_id, "object": "file", "deleted": True})


async def list_files(request: Request) -> Response:
    """GET /v1/files: the key's files, newest first (`limit`, `order`, `after`, `purpose`)."""
    files, key_id = _files(request), await _key(request)
    params = page_params(request.query_params)
    rows, more = await _db(files.store.page, key_id, params.limit, params.descending, params.after,
                           request.query_params.get("purpose"))
    data = [public(row) for row in rows]
    return SafeJSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more})


ROUTES = [
    Route("/v1/files", upload_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]

