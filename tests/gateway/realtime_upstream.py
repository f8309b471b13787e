"""A mock of OpenAI's Realtime API: a `websockets` server in a thread of the test process, speaking its events.

On connect: `session.created`. Then, for each client event:
  session.update    -> session.updated (the session as sent, merged into the current one)
  response.create   -> response.created, `DELTAS` response.output_audio_transcript.delta events,
                       response.done with `usage` (`USAGE`: text, audio and cached tokens apart)
  conversation.item.create -> conversation.item.added (the item, given an id)
  mock.close        -> close with the event's `code` and `reason` (a close passed through to the client);
                       `code` null: a close frame with no status (the peer reads 1005)
  mock.die          -> the TCP connection aborted without a close frame (an upstream crash)
  mock.echo         -> the frame sent back; mock.burst -> `count` audio deltas of `size` characters (the bench's;
                       `audio`: true, base64 pcm16 audio as a model speaks it, 64 distinct chunks in turn)
  anything else     -> an `error` event (`invalid_json` for a frame that is no JSON object)
A binary frame is sent back as it came. `die_mid_response`: the connection aborted after a response's first
delta. Every connection is recorded: its path with query, headers, the frames it got, and how it closed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import random
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

DELTAS = ("Hel", "lo ", "there")
USAGE = {"total_tokens": 90, "input_tokens": 40, "output_tokens": 50,
         "input_token_details": {"text_tokens": 15, "audio_tokens": 25, "image_tokens": 0, "cached_tokens": 10,
                                 "cached_tokens_details": {"text_tokens": 4, "audio_tokens": 6, "image_tokens": 0}},
         "output_token_details": {"text_tokens": 8, "audio_tokens": 42}}


@dataclass
class Connection:
    path: str
    headers: dict[str, str]
    received: list[str | bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    close_code: int | None = None
    close_reason: str | None = None


class RealtimeUpstream:
    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.die_mid_response = False
        self.port = 0
        self._responses = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last(self) -> Connection:
        return self.connections[-1]

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        seen = Connection(ws.request.path, {k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.connections.append(seen)
        session = {"id": f"sess_{len(self.connections)}", "object": "realtime.session", "type": "realtime",
                   "model": "gpt-realtime"}
        try:
            await _send(ws, "session.created", session=session)
            async for frame in ws:
                seen.received.append(frame)
                if isinstance(frame, bytes):
                    await ws.send(frame)
                    continue
                await self._answer(ws, frame, session)
        except ConnectionClosed:
            pass
        finally:
            seen.close_code, seen.close_reason = ws.close_code, ws.close_reason
            seen.closed.set()

    async def _answer(self, ws: ServerConnection, frame: str, session: dict) -> None:
        try:
            event = json.loads(frame)
        except ValueError:
            event = None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "session.update":
            session.update(event.get("session") or {})
            await _send(ws, "session.updated", session=session)
        elif kind == "response.create":
            await self._respond(ws)
        elif kind == "conversation.item.create":
            item = {"id": f"item_{len(session)}", **(event.get("item") or {})}
            await _send(ws, "conversation.item.added", previous_item_id=None, item=item)
        elif kind == "mock.close":
            await ws.close(event["code"], event.get("reason", ""))  # None: websockets sends an empty close frame
        elif kind == "mock.die":
            ws.transport.abort()
        elif kind == "mock.echo":  # the frame back as it came (bench/realtime_relay.py's round trips)
            await ws.send(frame)
        elif kind == "mock.burst":  # `count` audio deltas of `size` characters at once (its throughput)
            chunks = audio_chunks(event["size"]) if event.get("audio") else ["A" * event["size"]]
            deltas = [json.dumps({"type": "response.output_audio.delta", "response_id": "resp_b", "delta": chunk})
                      for chunk in chunks]
            for i in range(event["count"]):
                await ws.send(deltas[i % len(deltas)])
        else:
            code = "invalid_json" if kind is None else "invalid_event"
            await _send(ws, "error", error={"type": "invalid_request_error", "code": code,
                                            "message": f"not an event this mock knows: {frame[:40]!r}"})

    async def _respond(self, ws: ServerConnection) -> None:
        self._responses += 1
        response = {"id": f"resp_{self._responses}", "object": "realtime.response", "status": "in_progress",
                    "output": [], "usage": None}
        await _send(ws, "response.created", response=response)
        for i, delta in enumerate(DELTAS):
            await _send(ws, "response.output_audio_transcript.delta", response_id=response["id"], item_id="item_1",
                        output_index=0, content_index=0, delta=delta)
            if self.die_mid_response and i == 0:
                ws.transport.abort()
                return
        await _send(ws, "response.done", response={**response, "status": "completed", "usage": USAGE})


@functools.cache
def audio_chunks(chars: int, count: int = 64) -> list[str]:
    """`count` distinct base64 chunks of `chars` characters of 24 kHz pcm16: a voice-like tone (a wandering pitch
    under a syllable-rate envelope) plus noise, as deflate would meet a model's speech. Distinct, and 64 of them
    (past deflate's 32 KiB window), so no chunk is compressed against an earlier copy of itself."""
    rng = random.Random(chars)
    samples_per_chunk = chars * 3 // 8  # 4 base64 characters carry 3 bytes: 2 bytes a sample
    chunks, t = [], 0
    for _ in range(count):
        pcm = bytearray()
        for _ in range(samples_per_chunk):
            pitch = 140 + 40 * math.sin(2 * math.pi * 0.7 * t / 24_000)
            envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t / 24_000)
            value = 9000 * envelope * math.sin(2 * math.pi * pitch * t / 24_000) + rng.gauss(0, 300)
            pcm += struct.pack("<h", max(-32768, min(32767, int(value))))
            t += 1
        chunks.append(base64.b64encode(bytes(pcm)).decode()[:chars])
    return chunks


async def _send(ws: ServerConnection, kind: str, **fields: object) -> None:
    await ws.send(json.dumps({"type": kind, "event_id": f"event_{id(fields)}", **fields}))


@contextmanager
def realtime_upstream() -> Iterator[RealtimeUpstream]:
    """The mock on a free port of 127.0.0.1, served from its own thread's event loop."""
    mock = RealtimeUpstream()
    started, stop = threading.Event(), None
    loop = asyncio.new_event_loop()

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with serve(mock._handle, "127.0.0.1", 0, compression=None) as server:
            mock.port = next(iter(server.sockets)).getsockname()[1]
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="realtime-upstream", daemon=True)
    thread.start()
    assert started.wait(10), "the realtime mock did not start"
    try:
        yield mock
    finally:
        loop.call_soon_threadsafe(stop.set)  # type: ignore[union-attr]
        thread.join(10)
        loop.close()
