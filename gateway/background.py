"""Background responses (`background: true`), as OpenAI runs them: the request is answered at once with
the Response `queued`, the gateway runs it on its own (routing, queueing, the upstream call, the outcome
row, as for any request), and the client polls `GET /v1/responses/{id}` until it is `completed`,
`incomplete`, `failed` or `cancelled`; `POST /v1/responses/{id}/cancel` stops it.

Its state is its stored response's row (gateway/stored_responses.py), so every replica reads it. The
replica running it renews a lease on the row every third of `lease_s`; a run whose lease ran out (its
replica stopped) reads as `failed`. A cancel that lands on another replica marks the row `cancelled`,
and the replica running it sees that at its next renewal and stops. A shutdown lets runs go on for the
drain's grace, then ends them as `failed`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.server.errors import APIError
from gateway.outcomes import storable
from storage.inserts import describe
from storage.responses import ACTIVE, ResponseStore

log = logging.getLogger("pitstop.gateway")

LEASE_S = 15.0
FINAL_WRITE_TRIES, FINAL_WRITE_WAIT_S = 30, 2.0  # a run's end is written for a minute while the database is away
CANCELLED = "cancelled by POST /v1/responses/{id}/cancel"
SHUTDOWN = "the gateway shut down before it finished"
GONE = "the gateway replica running it stopped before it finished"


def failed(response: dict, error: APIError) -> dict:
    """The Response ended by an error (its `error` in the Response's own shape)."""
    code = "rate_limit_exceeded" if error.status == 429 else "server_error" if error.status >= 500 else (
        error.code or "invalid_prompt")
    return {**response, "status": "failed", "error": {"code": code, "message": error.message}}


def view(row: dict, now: datetime) -> dict:
    """The Response as a reader sees it: a run whose lease ran out has failed."""
    lease_until = row.get("lease_until")
    if row.get("status") in ACTIVE and lease_until is not None and lease_until <= now:
        return failed(row["response"], APIError(500, GONE))
    return row["response"]


@dataclass
class BackgroundRuns:
    store: ResponseStore
    lease_s: float = LEASE_S
    runs: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # the ones this replica runs

    def lease_until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    def start(self, response_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` (the request, served as a whole answer: it writes the run's end) on its own."""
        self.runs[response_id] = asyncio.create_task(self._run(response_id, work), name=f"background {response_id}")

    async def _run(self, response_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        renewer = asyncio.create_task(self._renew(response_id, task))
        try:
            await work()
        finally:
            renewer.cancel()
            self.runs.pop(response_id, None)

    async def _renew(self, response_id: str, run: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                status = await asyncio.to_thread(self.store.renew, response_id, self.lease_until())
            except Exception as exc:  # the next renewal, or the lease's end, settles it
                log.warning("renewing background response %s: %s", response_id, describe(exc))
                continue
            if status not in ACTIVE:  # cancelled on another replica, or deleted
                run.cancel(CANCELLED)
                return

    async def advance(self, response: dict) -> bool:
        """Write the run's new state while it is still queued or in progress (False once it is not); its
        end is tried again while the database is away."""
        final = response["status"] not in ACTIVE
        for attempt in range(FINAL_WRITE_TRIES if final else 1):
            try:
                return await asyncio.to_thread(self.store.advance, response["id"], storable(response),
                                               None if final else self.lease_until())
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
            await self.advance({**row["response"], "status": "cancelled"})
            return
        run.cancel(CANCELLED)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(run), self.lease_s)

    async def close(self, grace_s: float) -> None:
        """At shutdown: the runs still going get `grace_s`, then end as failed."""
        runs = list(self.runs.values())
        if not runs:
            return
        _, left = await asyncio.wait(runs, timeout=grace_s)
        for run in left:
            run.cancel(SHUTDOWN)
        await asyncio.gather(*left, return_exceptions=True)
