"""A whole (not streamed) answer raced against its client leaving: the work is cancelled for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextlib import suppress
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


async def wait_for_disconnect(request: Request) -> None:
    # The body has been read: the next ASGI message for this request is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> asyncio.Future[T]:
    """`work` run to its end, or cancelled when the client leaves first; the finished (or cancelled) future."""
    task = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not task.done():  # the client left (or we were cancelled): stop for nobody
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    return task
