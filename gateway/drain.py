"""A bounded shutdown. On SIGTERM the gateway lets the requests in flight finish; when
`server.graceful_shutdown_s` runs out it cuts those still running itself, so that each gets an answer
in OpenAI's shape: a whole answer a 503 `shutting_down` (clients retry it, on another replica behind a
load balancer), a stream an error event. Left to uvicorn, the cut is a plain-text 500 or a dropped
connection; uvicorn's own limit stays as the backstop, `BACKSTOP_S` later."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from engine.server.errors import APIError

BACKSTOP_S = 1.0  # how long after the cut uvicorn cancels what still runs (the answers are being sent)
CUT_MESSAGE = "cut by the gateway's shutdown (server.graceful_shutdown_s ran out)"


class Drain:
    """The tasks answering requests, and whether the server is draining or has cut them."""

    def __init__(self) -> None:
        self.started = False
        self.cut = False
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, grace_s: float | None) -> None:
        """Shutdown started: cut what still runs after `grace_s` (None: never, as uvicorn then waits)."""
        self.started = True
        if grace_s is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(grace_s, self.cut_all)

    def cut_all(self) -> None:
        self.cut = True
        for task in list(self._tasks):
            task.cancel(CUT_MESSAGE)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Track the current task (a request's handler, or the task streaming its answer)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.cut:  # it started after the cut (a stream's first step): cut it at its next await
            task.cancel(CUT_MESSAGE)
        try:
            yield
        finally:
            self._tasks.discard(task)

    def absorb(self) -> APIError | None:
        """In an `except CancelledError`: the error to answer with if the cancel was the cut, after
        clearing the cancel so the answer can still be sent; None if it was anything else."""
        task = asyncio.current_task()
        if not self.cut or task is None:
            return None
        while task.uncancel():  # the cut, and uvicorn's backstop if it came too
            pass
        return APIError(503, f"the gateway is shutting down: this request was {CUT_MESSAGE}; retry it",
                        code="shutting_down")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, beginning the gateway's drain when its shutdown starts (SIGTERM, Ctrl-C)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float | None) -> None:
        super().__init__(config)
        self.drain, self.grace_s = drain, grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin(self.grace_s)
        await super().shutdown(sockets)
