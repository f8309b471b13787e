"""Database calls made while answering a request: run in a thread, and an outage answered as the API's
503, naming what is unavailable, never a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from engine.server.errors import APIError
from storage.inserts import describe

DbCall = Callable[..., Awaitable[Any]]


def db_call_or_503(what: str, code: str) -> DbCall:
    """`await call(fn, *args)`: `fn(*args)` in a thread; an error from the database is a 503 saying that
    `what` (plural: "files") is unavailable, with `code`."""

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            raise APIError(503, f"{what} are unavailable (the database is not answering: {describe(exc)}); retry",
                           code=code) from None

    return call
