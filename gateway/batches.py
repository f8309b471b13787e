"""OpenAI's Batch API: `POST /v1/batches` names an uploaded JSONL file (gateway/files.py) whose lines are
requests to one endpoint (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses`,
`/v1/moderations`, or Pitstop's `/v1/rerank`); the gateway serves them on its own and writes their answers to
an output file (and their errors to an error file), while the client polls the batch.

Each line is served as the same request sent over HTTP would be (gateway/proxy.py `serve_body`; a rerank's
by gateway/rerank.py, a moderation's by gateway/moderation.py): the batch's key, its limits and budget,
routing, and an outcome row; at `BATCH_PRIORITY` unless the line asks otherwise, so interactive traffic goes
first wherever the scheduler orders by priority. `concurrency` lines are in flight at once. The batch's
state is its row (storage/files.py), so any replica reads or cancels it; the replica running it renews a
lease on the row every second, writing the lines it finished (`batch_records`) and seeing there a cancel made
elsewhere. Nothing accepted is lost: a batch whose lease ran out (its replica stopped, or let it go at its
shutdown) is taken over by the next replica that looks (every `ADOPT_S`), which serves only the lines not yet
finished. A cancelled batch keeps what it finished, in its output file; so does one whose completion window
closes (`expired`: the lines left are in its error file as `batch_expired`)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

from engine.server.errors import bad_request, not_found
from gateway.auth import Caller
from gateway.files import Files, _db, expiry_seconds
from gateway.moderation_request import PATHS as MODERATION_PATHS
from gateway.rerank_request import PATHS as RERANK_PATHS
from storage.files import BatchStore
from storage.inserts import describe

# An endpoint's paths: a rerank's are the live endpoint's three, a moderation's two (a line may name any).
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding",
             "/v1/responses": "responses", **dict.fromkeys(RERANK_PATHS, "rerank"),
             **dict.fromkeys(MODERATION_PATHS, "moderation")}
MAX_LINES = 50_000  # OpenAI's limit on a batch's requests
BATCH_PRIORITY = 10.0  # after interactive requests (0 unless a key sets one) where priorities order a queue
LEASE_S = 15.0
PROGRESS_S = 1.0  # how often a running batch's request counts are written
ADOPT_S = 5.0  # how often a replica looks for batches whose replica stopped
MAX_WINDOW_S = 7 * 86_400
EXPIRED_ERROR = {"code": "batch_expired",
                 "message": "This request could not be executed before the completion window expired."}

log = logging.getLogger("pitstop.gateway")

# (caller, endpoint kind, body, batch id) -> the answer
Serve = Callable[[Caller, str, dict, str], Awaitable[Response]]


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
                or request.get("method") != "POST" or ENDPOINTS.get(request.get("url")) != ENDPOINTS[url] \
                or not isinstance(request.get("body"), dict):
            raise bad_request(f"line {number} of the input file must be an object with a string 'custom_id', "
                              f"'method': 'POST', 'url': {url!r} (the batch's endpoint, or another path of it) "
                              "and a 'body' object", "input_file_id", "invalid_file")
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


def window_seconds(window: Any) -> int:
    """A `completion_window` in seconds: OpenAI's "24h", or (Pitstop's extension) any "<n>s|m|h" up to a week."""
    match = re.fullmatch(r"([1-9][0-9]{0,6})([smh])", window) if isinstance(window, str) else None
    seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]] if match else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise bad_request("'completion_window' must be \"24h\" (or any \"<n>s\", \"<n>m\" or \"<n>h\" up to 168h)",
                          "completion_window", "invalid_value")
    return seconds


def _expired(line: dict) -> dict:
    """A line the window closed on before it was answered, as the error file holds it (as OpenAI's does)."""
    return {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": line["custom_id"], "response": None,
            "error": EXPIRED_ERROR}


def _record(line: dict, answer: Response) -> dict:
    """A finished line as the output (or error) file holds it."""
    return {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": line["custom_id"],
            "response": {"status_code": answer.status_code, "request_id": answer.headers.get("x-pitstop-request-id"),
                         "body": json.loads(answer.body) if answer.body else None}, "error": None}


async def _no_caller(key_id: str | None) -> Caller | None:
    raise RuntimeError("the app sets how batches find their key (gateway/app.py)")


@dataclass
class Batches:
    store: BatchStore
    files: Files
    serve: Serve
    concurrency: int = 8
    lease_s: float = LEASE_S
    caller_of: Callable[[str | None], Awaitable[Caller | None]] = _no_caller  # a key's caller, for a batch taken over
    runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # the ones this replica runs
    closing: bool = False  # shutting down: runs stop where they are, for another replica to go on
    _adopter: asyncio.Task[None] | None = None

    def lease_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    async def create(self, raw: Any, caller: Caller) -> dict:
        if not isinstance(raw, dict):
            raise bad_request("the body must be a JSON object")
        url, file_id, window = raw.get("endpoint"), raw.get("input_file_id"), raw.get("completion_window", "24h")
        if url not in ENDPOINTS:
            raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}", "endpoint", "invalid_value")
        seconds = window_seconds(window)
        if not isinstance(file_id, str):
            raise bad_request("'input_file_id' must be a file's id", "input_file_id", "missing_required_parameter")
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request("'metadata' must be an object", "metadata", "invalid_type")
        output_expiry_s = expiry_seconds(raw.get("output_expires_after"), "output_expires_after")
        await self.files.owned(file_id, caller.key_id, "input_file_id")
        lines = _lines(await self.files.content(file_id, caller.key_id), url)
        now = _now()
        batch = {"id": "batch_" + uuid.uuid4().hex, "object": "batch", "endpoint": url, "errors": None,
                 "input_file_id": file_id, "completion_window": window, "status": "in_progress",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": now,
                 "expires_at": now + seconds, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None, "metadata": metadata,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 **({"output_expires_after": {"anchor": "created_at", "seconds": output_expiry_s}}
                    if output_expiry_s is not None else {})}
        await _db(self.store.put, {"id": batch["id"], "created_at": datetime.now(UTC), "api_key_id": caller.key_id,
                                   "status": batch["status"], "lease_until": self.lease_until(), "batch": batch})
        self._start(batch, lines, caller, {})
        return batch

    def _start(self, batch: dict, lines: list[dict], caller: Caller, done: dict[str, dict]) -> None:
        self.runs[batch["id"]] = asyncio.create_task(self._run(batch, lines, caller, done), name=f"batch {batch['id']}")

    async def owned(self, batch_id: str, key_id: str | None) -> dict:
        row = await _db(self.store.get, batch_id)
        if row is None or row["api_key_id"] != key_id:
            raise not_found(f"no batch {batch_id!r} (unknown, or made with another API key)", None, "batch_not_found")
        return row

    async def find(self, batch_id: str, key_id: str | None) -> dict:
        return (await self.owned(batch_id, key_id))["batch"]

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

    async def _run(self, batch: dict, lines: list[dict], caller: Caller, done: dict[str, dict]) -> None:
        """Serve the lines not `done` yet; each finished one's record is written within a second (so a
        replica taking over serves only what is left), the files and the batch's end once all are."""
        run = asyncio.current_task()
        assert run is not None
        kind, unsaved = ENDPOINTS[batch["endpoint"]], []
        counts = batch["request_counts"]
        counts["failed"] = sum(row["failed"] for row in done.values())
        counts["completed"] = len(done) - counts["failed"]
        limit = asyncio.Semaphore(self.concurrency)

        async def one(line: dict) -> None:
            async with limit:
                body = {"priority": BATCH_PRIORITY, **line["body"]}
                answer = await self.serve(caller, kind, body, batch["id"])
                while answer.status_code == 429 and "retry-after" in answer.headers:  # the key's rate: wait for it
                    await asyncio.sleep(float(answer.headers["retry-after"]))
                    answer = await self.serve(caller, kind, body, batch["id"])
                failed = answer.status_code >= 400
                row = {"batch_id": batch["id"], "custom_id": line["custom_id"], "failed": failed,
                       "record": _record(line, answer)}
                done[line["custom_id"]] = row
                unsaved.append(row)
                counts["failed" if failed else "completed"] += 1

        keeper = asyncio.create_task(self._keep(batch, run, unsaved))
        served = [asyncio.create_task(one(line)) for line in lines if line["custom_id"] not in done]
        try:
            try:
                async with asyncio.timeout(max(batch["expires_at"] - time.time(), 0)):
                    await asyncio.gather(*served)
            except TimeoutError:  # the window closed: what is answered is kept, the rest is an error
                await asyncio.gather(*served, return_exceptions=True)
                for line in lines:
                    if line["custom_id"] not in done:
                        done[line["custom_id"]] = row = {"batch_id": batch["id"], "custom_id": line["custom_id"],
                                                         "failed": True, "record": _expired(line)}
                        unsaved.append(row)
                        counts["failed"] += 1
            # A batch taken over while it was finalizing an expiry is still expired.
            expired = any(row["record"].get("error") == EXPIRED_ERROR for row in done.values())
            # Never stamped before its own deadline: the window is timed on the monotonic clock, and a wall
            # clock that lags it (as a VM's can) would otherwise read the expiry as early.
            await self._end(batch, lines, done, unsaved, {"status": "expired",
                                                          "expired_at": max(_now(), batch["expires_at"])} if expired
                            else {"status": "completed", "completed_at": _now()})
        except asyncio.CancelledError:  # cancelled (here or elsewhere), or the gateway is shutting down
            for task in served:
                task.cancel()
            await asyncio.gather(*served, return_exceptions=True)
            if self.closing:  # another replica (or this one, restarted) goes on from what is written
                await self._save(unsaved)
                await asyncio.to_thread(self.store.advance, batch["id"], dict(batch), datetime.now(UTC),
                                        ("in_progress",))
                return
            row = await asyncio.to_thread(self.store.get, batch["id"])
            if row is not None and row["status"] == "cancelling":
                await self._end({**row["batch"], "request_counts": counts}, lines, done, unsaved,
                                {"status": "cancelled", "cancelled_at": _now()})
        finally:
            keeper.cancel()
            self.runs.pop(batch["id"], None)

    async def _save(self, unsaved: list[dict]) -> None:
        rows, unsaved[:] = list(unsaved), []
        try:
            await asyncio.to_thread(self.store.add_records, rows)
        except Exception:
            unsaved[:0] = rows  # the next write takes them
            raise

    async def _keep(self, batch: dict, run: asyncio.Task[None], unsaved: list[dict]) -> None:
        """Every second: write the finished lines and the request counts, renewing the lease; stop the run
        once it is cancelled."""
        while True:
            await asyncio.sleep(min(PROGRESS_S, self.lease_s / 3))
            try:
                await self._save(unsaved)
                status = await asyncio.to_thread(self.store.renew, batch["id"], self.lease_until())
                if status == "in_progress":
                    await asyncio.to_thread(self.store.advance, batch["id"], dict(batch), self.lease_until(),
                                            ("in_progress",))
            except Exception as exc:  # the next round, or the lease's end, settles it
                log.warning("writing batch %s's progress: %s", batch["id"], describe(exc))
                continue
            if status not in ("in_progress", "validating"):  # cancelling, or deleted
                run.cancel()
                return

    async def _end(self, batch: dict, lines: list[dict], done: dict[str, dict], unsaved: list[dict],
                   end: dict) -> None:
        """Write the output and error files (in the input's order), then the batch's end."""
        await self._save(unsaved)
        finalizing = {**batch, "status": "finalizing", "finalizing_at": _now()}
        await asyncio.to_thread(self.store.advance, batch["id"], finalizing, self.lease_until())
        outputs = [json.dumps(done[line["custom_id"]]["record"]) for line in lines
                   if line["custom_id"] in done and not done[line["custom_id"]]["failed"]]
        errors = [json.dumps(done[line["custom_id"]]["record"]) for line in lines
                  if line["custom_id"] in done and done[line["custom_id"]]["failed"]]
        ended = {**finalizing, **end}
        row = await asyncio.to_thread(self.store.get, batch["id"])
        key_id = None if row is None else row["api_key_id"]
        for name, records in (("output_file_id", outputs), ("error_file_id", errors)):
            if records:
                stored = await self.files.put(("\n".join(records) + "\n").encode(), f"{batch['id']}_{name[:-8]}.jsonl",
                                              "batch_output", key_id,
                                              (batch.get("output_expires_after") or {}).get("seconds"))
                ended[name] = stored["id"]
        await asyncio.to_thread(self.store.advance, batch["id"], ended, None, ("finalizing",))

    async def start(self) -> None:
        self._adopter = asyncio.create_task(self._adopt_loop())

    async def _adopt_loop(self) -> None:
        while True:
            try:
                await self.adopt()
            except Exception as exc:
                log.warning("looking for batches to take over: %s", describe(exc))
            await asyncio.sleep(ADOPT_S)

    async def adopt(self) -> None:
        """Take over the running batches whose lease ran out (their replica stopped, or let them go at its
        shutdown): serve what is left of each from where its finished lines say."""
        now = datetime.now(UTC)
        for batch_id in await asyncio.to_thread(self.store.stale, now):
            if self.closing or batch_id in self.runs or \
                    not await asyncio.to_thread(self.store.take_over, batch_id, now, self.lease_until()):
                continue
            row = await asyncio.to_thread(self.store.get, batch_id)
            assert row is not None
            batch, caller = row["batch"], await self.caller_of(row["api_key_id"])
            content = await asyncio.to_thread(self.files.store.content, batch["input_file_id"])
            if caller is None or content is None:
                why = "its API key was revoked" if caller is None else "its input file was deleted"
                await asyncio.to_thread(self.store.advance, batch_id, {
                    **batch, "status": "failed", "failed_at": _now(),
                    "errors": {"object": "list", "data": [{"code": "server_error", "message": why}]}}, None)
                continue
            done = {r["custom_id"]: r for r in await asyncio.to_thread(self.store.records, batch_id)}
            log.info("taking over batch %s: %d of %d requests done", batch_id, len(done),
                     batch["request_counts"]["total"])
            self._start(batch, _lines(content, batch["endpoint"]), caller, done)

    async def close(self, grace_s: float) -> None:
        """At shutdown: batches still running get `grace_s`, then stop where they are, their finished lines
        written and their lease let go, for another replica (or this one, restarted) to go on."""
        if self._adopter is not None:
            self._adopter.cancel()
        runs = list(self.runs.values())
        if runs:
            _, left = await asyncio.wait(runs, timeout=grace_s)
            self.closing = True
            for run in left:
                run.cancel()
            await asyncio.gather(*left, return_exceptions=True)
