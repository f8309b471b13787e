"""Several async iterators read as one, each item tagged with its iterator's place: the choices of one
request for `n` samples, which the engine generates as separate sequences. Closing the merge closes
every iterator (for the engine: aborts every sample); an error in one ends the merge with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")


async def merged(iterators: list[AsyncGenerator[T, None]]) -> AsyncIterator[tuple[int, T]]:
    if len(iterators) == 1:  # no tasks for the common case
        async with aclosing(iterators[0]) as only:
            async for item in only:
                yield 0, item
        return
    pending = {asyncio.ensure_future(anext(it)): i for i, it in enumerate(iterators)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):  # ties in the iterators' order
                i = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterators[i]))] = i
                yield i, item
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for it in iterators:
            await it.aclose()
