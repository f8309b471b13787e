"""Server-sent events the way OpenAI streams them: `data: {json}\n\n` per chunk, then `data: [DONE]`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from engine.server.json_out import json_bytes

DONE = b"data: [DONE]\n\n"


def sse_event(data: dict) -> bytes:
    return b"data: " + json_bytes(data) + b"\n\n"


class SSEResponse(StreamingResponse):
    """A `text/event-stream` response that always closes its generator, also when the client goes
    away while the generator is parked at a `yield`: closing runs its `finally` (the abort)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None],
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.events = events
        self.on_close = on_close  # after the generator is closed, whether or not it ever ran

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # an ASGI 2.4 server's send raised: the client left, there is no one to answer
        finally:
            await self.events.aclose()
            if self.on_close is not None:
                await self.on_close()
