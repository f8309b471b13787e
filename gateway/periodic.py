"""Housekeeping that runs now and then on every replica (deleting expired rows, say): a failure, such as
the database being away, is logged and the next round catches up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from storage.inserts import describe

log = logging.getLogger("pitstop.gateway")


class Periodic:
    """`work` now, then every `interval_s`, in a task of its own, until `close()`."""

    def __init__(self, work: Callable[[], Awaitable[object]], interval_s: float, what: str) -> None:
        self.work, self.interval_s, self.what = work, interval_s, what
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.what)

    async def _run(self) -> None:
        while True:
            try:
                await self.work()
            except Exception as exc:
                log.warning("%s: %s", self.what, describe(exc))
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
