"""Background responses (`background: true`), as OpenAI runs them: the request is answered at once with
the Response `queued`, the gateway runs it on its own (routing, queueing, the upstream call, the outcome
row, as for any request), and the client polls `GET /v1/responses/{id}` until it is `completed`,
`incomplete`, `failed` or `cancelled`; `POST /v1/responses/{id}/cancel` stops it.

Its state is its stored response's row (gateway/stored_responses.py), so every replica reads it. The
replica running it renews a lease on the row every third of `lease_s`. Nothing accepted is lost: the row
keeps the request, and a run whose lease lapsed (its replica was killed, or cut off from the database)
is taken over by the first replica to look (every `TAKEOVER_LOOK_S`, and at its start), which serves
the request again as the same response. A shutdown lets runs go on for the drain's grace, then lets
them go (`queued` again, the lease lapsed) for another replica, or this one restarted, to take over. A
request whose replicas stopped under it `MAX_TAKEOVERS` times without letting it go ends as `failed`. A
cancel that lands on another replica marks the row `cancelled`, and the replica running it sees that at
its next renewal and stops.

With `stream: true` the run's Responses events go to a feed (`RunFeed`) that the client's stream follows;
a client that leaves does not stop the run, and `GET /v1/responses/{id}?stream=true&starting_after=N`
resumes after event N: from the feed on the replica running it (kept `FEED_KEEP_S` after the run),
elsewhere (or once taken over: a run taken over is not streamed again) with the run's last event once
it has ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response

from engine.server.errors import APIError
from gateway.auth import Caller
from gateway.outcomes import storable
from gateway.responses_stream import sse
from storage.inserts import describe
from storage.responses import ACTIVE, TAKEN, ResponseStore

log = logging.getLogger("pitstop.gateway")

LEASE_S = 15.0
FEED_KEEP_S, FEEDS_KEPT = 600.0, 256  # a streamed run's events, for resuming: ten minutes, as polling
FOLLOW_POLL_S = 0.5  # resuming on a replica that does not run it: how often its row is read
FINAL_WRITE_TRIES, FINAL_WRITE_WAIT_S = 30, 2.0  # a run's end is written for a minute while the database is away
TAKEOVER_LOOK_S = 5.0  # how often a replica looks for runs whose replica stopped
MAX_TAKEOVERS = 3  # a request whose replicas stopped under it this many times is not run again
CANCELLED = "cancelled by POST /v1/responses/{id}/cancel"
SHUTDOWN = "the gateway shut down before it finished; another replica, or this one restarted, takes it over"
GONE = "the gateway replica running it stopped before it finished"
TAKEN_ELSEWHERE = "taken over by another gateway replica while this one was cut off from the database"
TOO_MANY_TAKEOVERS = f"the gateway replicas running it stopped {MAX_TAKEOVERS + 1} times before it finished"


async def _no_caller(key_id: str | None) -> Caller | None:
    return None


async def _no_resume(caller: Caller, row: dict) -> Response:
    raise RuntimeError("the app sets how taken-over background responses are served (gateway/app.py)")


def failed(response: dict, error: APIError) -> dict:
    """The Response ended by an error (its `error` in the Response's own shape)."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error" if error.status >= 500 else (
        error.code or "invalid_prompt")
    return {**response, "status": "failed", "error": {"code": code, "message": error.message}}


def view(row: dict, now: datetime) -> dict:
    """The Response as a reader sees it: a run whose lease lapsed is waiting for a replica to take it over,
    unless its request was not kept (made before takeovers were): then it has failed."""
    lease_until = row.get("lease_until")
    if row.get("status") in ACTIVE and lease_until is not None and lease_until <= now and row.get("request") is None:
        return failed(row["response"], APIError(500, GONE))
    return row["response"]


class RunFeed:
    """A streamed run's events (SSE bytes), in order: event k is the one numbered k."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.ended_at: float | None = None
        self._changed = asyncio.Condition()

    async def push(self, event: bytes) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def end(self) -> None:
        async with self._changed:
            self.ended_at = time.monotonic()
            self._changed.notify_all()

    async def follow(self, after: int) -> AsyncGenerator[bytes, None]:
        """The events numbered after `after`, as they come, until the run ends."""
        at = after + 1
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda start=at: len(self.events) > start or self.ended_at is not None)
                batch, ended = self.events[at:], self.ended_at is not None
            for event in batch:
                yield event
            at += len(batch)
            if ended and at >= len(self.events):
                return


@dataclass
class BackgroundRuns:
    store: ResponseStore
    lease_s: float = LEASE_S
    runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # the ones this replica runs
    holds: dict[str, str] = field(default_factory=dict)  # their lease tokens (and a takeover's, before it runs)
    feeds: OrderedDict[str, RunFeed] = field(default_factory=OrderedDict)  # streamed ones' events, by id
    # Set by the app (gateway/app.py): a taken-over run's request served again, from its key's caller.
    resume: Callable[[Caller, dict], Awaitable[Response]] = _no_resume
    caller_of: Callable[[str | None], Awaitable[Caller | None]] = _no_caller
    counted: Callable[[str], None] = lambda outcome: None  # a takeover's outcome, for the app's metrics
    closing: bool = False
    _looker: asyncio.Task[None] | None = None

    def lease_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    def hold(self, response_id: str) -> str:
        """A new lease token for a run this replica is to run (its row is written, or taken over, with it)."""
        self.holds[response_id] = token = uuid.uuid4().hex
        return token

    def start(self, response_id: str, work: Callable[[], Coroutine[Any, Any, None]], streamed: bool) -> None:
        """Run `work` (the request, served: it writes the run's end) on its own, on the lease `hold` gave;
        a streamed one's events go to its feed."""
        if streamed:
            self._keep_feeds()
            self.feeds[response_id] = RunFeed()
        self.runs[response_id] = asyncio.create_task(self._run(response_id, work), name=f"background {response_id}")

    def _keep_feeds(self) -> None:
        now = time.monotonic()
        while self.feeds:
            ended_at = next(iter(self.feeds.values())).ended_at
            if len(self.feeds) < FEEDS_KEPT and (ended_at is None or now - ended_at < FEED_KEEP_S):
                break
            self.feeds.popitem(last=False)

    async def follow(self, row: dict, after: int, read: Callable[[], Awaitable[dict]]) -> AsyncGenerator[bytes, None]:
        """A streamed run's events after `after`: from its feed here, else (another replica runs it, or
        it ended long ago) its last event once it has ended, `read` giving its row."""
        feed = self.feeds.get(row["id"])
        if feed is not None:
            async for event in feed.follow(after):
                yield event
            return
        while (response := view(row, datetime.now(UTC)))["status"] in ACTIVE:
            await asyncio.sleep(FOLLOW_POLL_S)
            row = await read()
        if response["status"] != "cancelled":  # a cancelled stream just ends
            yield sse({"type": f"response.{response['status']}", "sequence_number": after + 1, "response": response})

    async def _run(self, response_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        renewer = asyncio.create_task(self._renew(response_id, task))
        try:
            await work()
        finally:
            renewer.cancel()
            self.runs.pop(response_id, None)
            self.holds.pop(response_id, None)

    async def _renew(self, response_id: str, run: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                status = await asyncio.to_thread(self.store.renew, response_id, self.lease_until(),
                                                 self.holds[response_id])
            except Exception as exc:  # the next renewal, or the lease's end, settles it
                log.warning("renewing background response %s: %s", response_id, describe(exc))
                continue
            if status in ("cancelled", None):  # cancelled on another replica, or deleted
                run.cancel(CANCELLED)
            elif status == TAKEN:  # its lease lapsed while this replica was cut off, and another took it over
                log.warning("background response %s was taken over by another replica: stopping here", response_id)
                run.cancel(TAKEN_ELSEWHERE)
            if status not in ACTIVE:  # else it has written its own end, and is finishing
                return

    async def advance(self, response: dict, held: bool = True) -> bool:
        """Write the run's new state while it is still queued or in progress, and on this replica's lease
        unless not `held` (a cancel, from any replica): False once not; its end is tried again while the
        database is away."""
        final = response["status"] not in ACTIVE
        token = self.holds.get(response["id"]) if held else None
        if held and token is None:
            return False  # not this replica's run
        for attempt in range(FINAL_WRITE_TRIES if final else 1):
            try:
                return await asyncio.to_thread(self.store.advance, response["id"], storable(response),
                                               None if final else self.lease_until(), token)
            except Exception as exc:
                log.warning("writing background response %s (%s, attempt %d): %s", response["id"],
                            response["status"], attempt + 1, describe(exc))
                if final:
                    await asyncio.sleep(FINAL_WRITE_WAIT_S)
        return False

    async def cancel(self, row: dict) -> None:
        """Stop a queued or running response: here if this replica runs it (its run writes `cancelled`),
        else by marking its row, which the replica running it reads at its next renewal."""
        run = self.runs.get(row["id"])
        if run is None:
            await self.advance({**row["response"], "status": "cancelled"}, held=False)
            return
        run.cancel(CANCELLED)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(run), self.lease_s)

    async def release(self, response: dict) -> None:
        """Let a run go at shutdown: `queued` again, its lease lapsed, for another replica to take over (a
        hand-off that does not count against `MAX_TAKEOVERS`). One the database does not take lapses anyway."""
        token = self.holds.get(response["id"])
        try:
            if token is not None:
                await asyncio.to_thread(self.store.release, response["id"], storable(response), datetime.now(UTC), token)
        except Exception as exc:
            log.warning("letting background response %s go: %s", response["id"], describe(exc))

    def start_taking_over(self) -> None:
        self._looker = asyncio.create_task(self._look())

    async def _look(self) -> None:
        while True:
            try:
                await self.take_over()
            except Exception as exc:
                log.warning("looking for background responses to take over: %s", describe(exc))
            await asyncio.sleep(TAKEOVER_LOOK_S)

    async def take_over(self) -> None:
        """Run again the background responses whose lease lapsed, as the same responses; end as failed the
        ones that cannot be (their key revoked, too many takeovers, a refusal that will not pass)."""
        now = datetime.now(UTC)
        for response_id in await asyncio.to_thread(self.store.lapsed, now):
            if self.closing or response_id in self.runs:
                continue
            row = await asyncio.to_thread(self.store.take_over, response_id, now, self.lease_until(),
                                          self.hold(response_id))
            if row is None:  # another replica took it first
                self.holds.pop(response_id, None)
                continue
            try:
                await self._resume(row)
            finally:
                if response_id not in self.runs:
                    self.holds.pop(response_id, None)

    async def _resume(self, row: dict) -> None:
        caller = await self.caller_of(row["api_key_id"])
        if caller is None or row["takeovers"] > MAX_TAKEOVERS:
            why = "its API key was revoked" if caller is None else TOO_MANY_TAKEOVERS
            await self.advance(failed(row["response"], APIError(500, why)))
            self.counted("failed")
            return
        log.info("taking over background response %s (takeover %d)", row["id"], row["takeovers"])
        answer = await self.resume(caller, row)
        if row["id"] in self.runs or answer.status_code < 400:
            self.counted("resumed")
            return
        error = json.loads(bytes(answer.body))["error"]
        if answer.status_code == 503 or "retry-after" in answer.headers or error.get("code") == "conversation_locked":
            await self.release(row["response"])  # refused for now (a rate, its conversation, an outage): later
            self.counted("deferred")
            return
        await self.advance(failed(row["response"], APIError(answer.status_code, error["message"],
                                                            error.get("param"), error.get("code"))))
        self.counted("failed")

    async def close(self, grace_s: float) -> None:
        """At shutdown: the runs still going get `grace_s`, then are let go for another replica."""
        self.closing = True
        if self._looker is not None:
            self._looker.cancel()
        runs = list(self.runs.values())
        if not runs:
            return
        _, left = await asyncio.wait(runs, timeout=grace_s)
        for run in left:
            run.cancel(SHUTDOWN)
        await asyncio.gather(*left, return_exceptions=True)
