"""OpenAI's Batch API: `POST /v1/batches` names an uploaded JSONL file (gateway/files.py) whose lines are
requests to one endpoint (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` or
`/v1/responses`); the gateway serves them on its own and writes their answers to an output file (and
their errors to an error file), while the client polls the batch.

Each line is served as the same request sent over HTTP would be (gateway/proxy.py `serve_body`): the
batch's key, its limits and budget, routing, and an outcome row; at `BATCH_PRIORITY` unless the line asks
otherwise, so interactive traffic goes first wherever the scheduler orders by priority. `concurrency` lines
are in flight at once. The batch's state is its row (storage/files.py), so any replica reads or cancels
it; the replica running it renews a lease on the row, as for background responses (gateway/background.py):
a cancel made elsewhere is seen at the next renewal, and a batch whose lease ran out (its replica stopped)
reads as `failed`. A cancelled batch keeps what it finished, in its output file."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

from engine.server.errors import bad_request, not_found
from gateway.auth import Caller
from gateway.files import Files, _db
from storage.files import RUNNING, BatchStore

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding",
             "/v1/responses": "responses"}
MAX_LINES = 50_000  # OpenAI's limit on a batch's requests
BATCH_PRIORITY = 10.0  # after interactive requests (0 unless a key sets one) where priorities order a queue
LEASE_S = 15.0
PROGRESS_S = 1.0  # how often a running batch's request counts are written
GONE = "the gateway replica running it stopped before it finished"
SHUTDOWN = "the gateway shut down before it finished (what it finished is in its output file)"

Serve = Callable[[Caller, str, dict], Awaitable[Response]]  # (caller, endpoint kind, body) -> the answer


def _now() -> int:
    return int(time.time())


def _lines(content: bytes, url: str) -> list[dict]:
    """The input file's requests, checked as OpenAI checks them; a 400 naming the first bad line."""
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise bad_request("the input file is not UTF-8 text", "input_file_id", "invalid_file") from None
    lines, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            raise bad_request(f"line {number} of the input file is not JSON", "input_file_id", "invalid_file") from None
        if not isinstance(request, dict) or not isinstance(request.get("custom_id"), str) \
                or request.get("method") != "POST" or request.get("url") != url or not isinstance(request.get("body"), dict):
            raise bad_request(f"line {number} of the input file must be an object with a string 'custom_id', "
                              f"'method': 'POST', 'url': {url!r} (the batch's endpoint) and a 'body' object",
                              "input_file_id", "invalid_file")
        if request["custom_id"] in seen:
            raise bad_request(f"line {number}: 'custom_id' {request['custom_id']!r} is used twice", "input_file_id",
                              "invalid_file")
        if request["body"].get("stream") or request["body"].get("background"):
            raise bad_request(f"line {number}: a batch's requests are answered whole (no 'stream' or 'background')",
                              "input_file_id", "invalid_file")
        seen.add(request["custom_id"])
        lines.append(request)
    if not 1 <= len(lines) <= MAX_LINES:
        raise bad_request(f"the input file must hold 1 to {MAX_LINES} requests", "input_file_id", "invalid_file")
    return lines


def view(row: dict, now: datetime) -> dict:
    """The Batch as a reader sees it: one whose lease ran out has failed."""
    lease_until = row.get("lease_until")
    if row["status"] in RUNNING and lease_until is not None and lease_until <= now:
        return {**row["batch"], "status": "failed", "failed_at": int(lease_until.timestamp()),
                "errors": {"object": "list", "data": [{"code": "server_error", "message": GONE}]}}
    return row["batch"]


@dataclass
class Batches:
    store: BatchStore
    files: Files
    serve: Serve
    concurrency: int = 8
    lease_s: float = LEASE_S
    runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # the ones this replica runs

    def lease_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    async def create(self, raw: Any, caller: Caller) -> dict:
        if not isinstance(raw, dict):
            raise bad_request("the body must be a JSON object")
        url, file_id, window = raw.get("endpoint"), raw.get("input_file_id"), raw.get("completion_window", "24h")
        if url not in ENDPOINTS:
            raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}", "endpoint", "invalid_value")
        if window != "24h":
            raise bad_request("'completion_window' must be '24h'", "completion_window", "invalid_value")
        if not isinstance(file_id, str):
            raise bad_request("'input_file_id' must be a file's id", "input_file_id", "missing_required_parameter")
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request("'metadata' must be an object", "metadata", "invalid_type")
        await self.files.owned(file_id, caller.key_id, "input_file_id")
        lines = _lines(await self.files.content(file_id, caller.key_id), url)
        now = _now()
        batch = {"id": "batch_" + uuid.uuid4().hex, "object": "batch", "endpoint": url, "errors": None,
                 "input_file_id": file_id, "completion_window": window, "status": "in_progress",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": now,
                 "expires_at": now + 86_400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None, "metadata": metadata,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        await _db(self.store.put, {"id": batch["id"], "created_at": datetime.now(UTC), "api_key_id": caller.key_id,
                                   "status": batch["status"], "lease_until": self.lease_until(), "batch": batch})
        self.runs[batch["id"]] = asyncio.create_task(self._run(batch, lines, caller), name=f"batch {batch['id']}")
        return batch

    async def owned(self, batch_id: str, key_id: str | None) -> dict:
        row = await _db(self.store.get, batch_id)
        if row is None or row["api_key_id"] != key_id:
            raise not_found(f"no batch {batch_id!r} (unknown, or made with another API key)", None, "batch_not_found")
        return row

    async def find(self, batch_id: str, key_id: str | None) -> dict:
        return view(await self.owned(batch_id, key_id), datetime.now(UTC))

    async def cancel(self, batch_id: str, key_id: str | None) -> dict:
        """POST /v1/batches/{id}/cancel: `cancelling` at once; `cancelled` once its run has stopped and
        written what it finished (here, or on the replica running it, at its next renewal)."""
        row = await self.owned(batch_id, key_id)
        if row["status"] in ("in_progress", "validating"):
            cancelling = {**row["batch"], "status": "cancelling", "cancelling_at": _now()}
            if await _db(self.store.advance, batch_id, cancelling, row["lease_until"]):
                run = self.runs.get(batch_id)
                if run is not None:
                    run.cancel()
                    await asyncio.wait([run], timeout=self.lease_s)
        return await self.find(batch_id, key_id)

    async def _run(self, batch: dict, lines: list[dict], caller: Caller) -> None:
        run = asyncio.current_task()
        assert run is not None
        kind, results = ENDPOINTS[batch["endpoint"]], {}
        counts = batch["request_counts"]
        limit = asyncio.Semaphore(self.concurrency)

        async def one(line: dict) -> None:
            async with limit:
                body = {"priority": BATCH_PRIORITY, **line["body"]}
                answer = await self.serve(caller, kind, body)
                while answer.status_code == 429 and "retry-after" in answer.headers:  # the key's rate: wait for it
                    await asyncio.sleep(float(answer.headers["retry-after"]))
                    answer = await self.serve(caller, kind, body)
                results[line["custom_id"]] = answer
                counts["completed" if answer.status_code < 400 else "failed"] += 1

        keeper = asyncio.create_task(self._keep(batch, run))
        served = [asyncio.create_task(one(line)) for line in lines]
        try:
            await asyncio.gather(*served)
            await self._end(batch, lines, results, {"status": "completed", "completed_at": _now()})
        except asyncio.CancelledError:  # cancelled (here or elsewhere), or the gateway is shutting down
            for task in served:
                task.cancel()
            await asyncio.gather(*served, return_exceptions=True)
            row = await asyncio.to_thread(self.store.get, batch["id"])
            if row is not None and row["status"] == "cancelling":
                await self._end(row["batch"], lines, results, {"status": "cancelled", "cancelled_at": _now()})
            else:
                await self._end(batch, lines, results, {"status": "failed", "failed_at": _now(), "errors": {
                    "object": "list", "data": [{"code": "server_error", "message": SHUTDOWN}]}})
        finally:
            keeper.cancel()
            self.runs.pop(batch["id"], None)

    async def _keep(self, batch: dict, run: asyncio.Task[None]) -> None:
        """Write the request counts now and then, renewing the lease; stop the run once it is cancelled."""
        while True:
            await asyncio.sleep(min(PROGRESS_S, self.lease_s / 3))
            try:
                status = await asyncio.to_thread(self.store.renew, batch["id"], self.lease_until())
                if status == "in_progress":
                    await asyncio.to_thread(self.store.advance, batch["id"], dict(batch), self.lease_until(),
                                            ("in_progress",))
            except Exception:  # the next renewal, or the lease's end, settles it
                continue
            if status not in ("in_progress", "validating"):  # cancelling, or deleted
                run.cancel()
                return

    async def _end(self, batch: dict, lines: list[dict], results: dict[str, Response], end: dict) -> None:
        """Write the output and error files (in the input's order), then the batch's end."""
        finalizing = {**batch, "status": "finalizing", "finalizing_at": _now()}
        await asyncio.to_thread(self.store.advance, batch["id"], finalizing, self.lease_until())
        outputs, errors = [], []
        for line in lines:
            answer = results.get(line["custom_id"])
            if answer is None:
                continue
            body = json.loads(answer.body) if answer.body else None
            record = {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": line["custom_id"],
                      "response": {"status_code": answer.status_code,
                                   "request_id": answer.headers.get("x-pitstop-request-id"), "body": body},
                      "error": None}
            (outputs if answer.status_code < 400 else errors).append(json.dumps(record))
        ended = {**finalizing, **end}
        key_id = await self._key_of(batch["id"])
        for name, records in (("output_file_id", outputs), ("error_file_id", errors)):
            if records:
                stored = await self.files.put(("\n".join(records) + "\n").encode(), f"{batch['id']}_{name[:-8]}.jsonl",
                                              "batch_output", key_id)
                ended[name] = stored["id"]
        await asyncio.to_thread(self.store.advance, batch["id"], ended, None, ("finalizing",))

    async def _key_of(self, batch_id: str) -> str | None:
        row = await asyncio.to_thread(self.store.get, batch_id)
        return None if row is None else row["api_key_id"]

    async def close(self, grace_s: float) -> None:
        """At shutdown: batches still running get `grace_s`, then end `failed`, with what they finished."""
        runs = list(self.runs.values())
        if runs:
            _, left = await asyncio.wait(runs, timeout=grace_s)
            for run in left:
                run.cancel()
            await asyncio.gather(*left, return_exceptions=True)

