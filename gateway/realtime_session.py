"""One realtime session's relay: every frame both ways unchanged (text and binary), and one outcome row per
response.

Backpressure: each direction is one loop that reads a frame and awaits its send before it reads the next;
frames from upstream wait in the connection's bounded queue (gateway/realtime_target.py RECEIVE_QUEUE), so a
slow client stops the reads and TCP pushes back on the upstream, and a fast client is not read ahead of
upstream's write buffer. Nothing is parsed but an event's `type` (read from the frame's head); whole events
are read only for `response.created` and `response.done`.

Accounting: a response's row opens at its `response.created`, timed from the client's `response.create`
that asked for it (in order; a response the server's voice detection started is timed from its creation),
and is finished at its `response.done` with `response.usage` priced by gateway/realtime_usage.py, its
cost charged to the key and its team as any request's (gateway/outcomes.py). A response still open when the
session ends leaves a row saying why (its usage unknown, nothing charged for it). After each response's
spend is settled, a key or team whose budget is spent ends the session: an `error` event
(`budget_exceeded`), then close 1008."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import deque
from typing import Any

from starlette.websockets import WebSocket
from websockets.exceptions import ConnectionClosed

from gateway.auth import Caller
from gateway.limits.base import usd_to_nanousd
from gateway.limits.periods import current_period
from gateway.outcomes import OutcomeDraft
from gateway.realtime_target import Upstream
from gateway.realtime_usage import RealtimePrices, realtime_tokens
from gateway.routing import Route
from gateway.state import GatewayState

ENDPOINT = "realtime"  # the outcome rows' `endpoint`
_TYPE = re.compile(r'"type"\s*:\s*"([^"]{1,80})"')
_HEAD_CHARS = 256  # an event's `type` is read from this much of its frame (OpenAI sends it near the start)
UNSENDABLE = {1005, 1006, 1015}  # close codes a peer reports but none may send
CRASHED = 1011  # the client's close when upstream dropped without a close frame
BUDGET_CLOSE = 1008  # policy violation: the key's budget is spent


def event_type(text: str) -> str | None:
    """A text frame's event `type`, from its head (None: not found there)."""
    found = _TYPE.search(text, 0, _HEAD_CHARS)
    if found is None and len(text) <= 4 * _HEAD_CHARS:  # a short event whose type is late: read it whole
        found = _TYPE.search(text)
    return found.group(1) if found else None


def _load(text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        event = json.loads(text)
        if isinstance(event, dict):
            return event
    return {}


class SessionEnded(Exception):
    def __init__(self, code: int, reason: str, error: dict | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.error = code, reason, error  # an `error` event sent before the close


class RealtimeSession:
    def __init__(self, state: GatewayState, websocket: WebSocket, caller: Caller, upstream: Upstream,
                 prices: RealtimePrices) -> None:
        self.state, self.websocket, self.caller, self.upstream, self.prices = state, websocket, caller, upstream, prices
        self.id = f"rtsess-{uuid.uuid4().hex}"
        self.asked: deque[float] = deque()  # when the client's response.create events were sent, not yet created
        self.responses: dict[str, OutcomeDraft] = {}  # open responses by id
        self.upstream_session: str | None = None  # upstream's session.id
        model = upstream.model
        events = state.metrics.realtime_events
        self.sent_up, self.sent_down = events.labels(model, "client"), events.labels(model, "upstream")

    async def run(self) -> None:
        """Relay until either side ends; the other is closed with what ended it."""
        to_upstream = asyncio.create_task(self._client_to_upstream())
        to_client = asyncio.create_task(self._upstream_to_client())
        try:
            done, _ = await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_upstream, to_client):
                task.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)
        ended = next(iter(done)).exception()
        if isinstance(ended, SessionEnded):
            await self.end(ended)
        elif ended is not None:
            raise ended

    async def end(self, ended: SessionEnded, upstream_code: int = 1000) -> None:
        """Both sides closed (each at most once), open responses' rows written."""
        self._abandon(ended.reason)
        with contextlib.suppress(Exception):  # the client may be gone already
            if ended.error is not None:
                await self.websocket.send_text(json.dumps(ended.error))
            await self.websocket.close(ended.code, ended.reason[:120])
        await self.upstream.connection.close(upstream_code, ended.reason[:120])

    async def _client_to_upstream(self) -> None:
        connection = self.upstream.connection
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                await connection.close(1000, "the client left")
                raise SessionEnded(1000, "the client left")
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                if "response.create" in text and event_type(text) == "response.create":
                    self.asked.append(time.monotonic())
                payload: str | bytes = text
            else:
                payload = data or b""
            try:
                await connection.send(payload)  # a malformed event too: upstream judges it
            except ConnectionClosed:
                raise self._upstream_closed() from None
            self.sent_up.inc()

    async def _upstream_to_client(self) -> None:
        connection = self.upstream.connection
        try:
            async for message in connection:
                try:
                    if isinstance(message, str):
                        await self.websocket.send_text(message)
                    else:
                        await self.websocket.send_bytes(message)
                except Exception:  # the client is gone (uvicorn's ClientDisconnected, a closed socket)
                    raise SessionEnded(1000, "the client left") from None
                self.sent_down.inc()
                if isinstance(message, str):
                    await self._account(message)
        except ConnectionClosed:
            pass
        raise self._upstream_closed()

    def _upstream_closed(self) -> SessionEnded:
        """Upstream's close, as the client is to get it: its code and reason, 1011 where it dropped."""
        connection = self.upstream.connection
        code, reason = connection.close_code, connection.close_reason or ""
        if code is None or code in UNSENDABLE:
            code, reason = (1000, reason) if code == 1005 else (CRASHED, "the upstream connection was lost")
        return SessionEnded(code, reason or "the upstream closed the session")

    async def _account(self, text: str) -> None:
        kind = event_type(text)
        if kind == "response.created":
            self._created(_load(text).get("response") or {})
        elif kind == "response.done":
            await self._done(_load(text).get("response") or {})
        elif kind == "session.created" and self.upstream_session is None:
            self.upstream_session = (_load(text).get("session") or {}).get("id")
        elif kind and kind.endswith(".delta"):
            for draft in self.responses.values():
                if draft.ttft_s is None:
                    draft.ttft_s = time.monotonic() - draft.started
                    break

    def _draft(self) -> OutcomeDraft:
        draft = OutcomeDraft(endpoint=ENDPOINT, caller=self.caller, route=Route(None, self.upstream.model))
        draft.deployment, draft.attempts = self.upstream.deployment, 1
        draft.extra["realtime"] = {"session": self.id, "upstream_session": self.upstream_session}
        return draft

    def _created(self, response: dict) -> None:
        draft = self._draft()
        if self.asked:
            draft.started = self.asked.popleft()
        response_id = response.get("id") if isinstance(response.get("id"), str) else draft.request_id
        draft.extra["realtime"]["response_id"] = response_id
        self.responses[response_id] = draft

    async def _done(self, response: dict) -> None:
        response_id = response.get("id")
        draft = self.responses.pop(response_id, None) if isinstance(response_id, str) else None
        if draft is None:  # its response.created was not seen: timed from now
            self._created(response)
            draft = self.responses.pop(next(reversed(self.responses)))
        tokens = realtime_tokens(response.get("usage"))
        draft.usage = tokens.as_usage()
        draft.priced_usd = self.prices.cost(tokens)
        draft.extra["realtime"]["tokens"] = tokens.by_modality()
        status = response.get("status")
        draft.finish_reason = status if isinstance(status, str) else None
        if status == "failed":
            error = (response.get("status_details") or {}).get("error") or {}
            draft.fail(502, str(error.get("message") or "the upstream's response failed"))
        self.state.recorder.finish(draft)
        await draft.settled()  # the spend counted before the budget is looked at
        spent = await budget_spent(self.state, self.caller)
        if spent is not None:
            error = {"type": "error", "event_id": f"event_{uuid.uuid4().hex}",
                     "error": {"type": "invalid_request_error", "code": "budget_exceeded", "message": spent,
                               "param": None, "event_id": None}}
            raise SessionEnded(BUDGET_CLOSE, "budget_exceeded", error)

    def _abandon(self, reason: str) -> None:
        """Rows for the responses the session ended in the middle of."""
        for draft in self.responses.values():
            draft.fail(499 if "client" in reason else 502, f"the session ended before response.done: {reason}",
                       kind="aborted" if "client" in reason else "error")
            self.state.recorder.finish(draft)
        self.responses.clear()


async def budget_spent(state: GatewayState, caller: Caller) -> str | None:
    """Why the caller may not go on (its key's or its team's budget spent, as the limiter counts it), or None."""
    subjects = []
    if caller.key_id is not None and caller.budget_usd is not None:
        subjects.append((caller.key_id, caller.budget_usd, current_period(caller.budget_period), "this API key"))
    team = caller.team
    if team is not None and team.budget_usd is not None:
        subjects.append((team.subject, team.budget_usd, current_period(team.budget_period), team.label))
    for subject, budget, period, whose in subjects:
        if usd_to_nanousd(await state.limiter.spent(subject, period)) >= usd_to_nanousd(budget):
            return f"{whose} has spent its budget; the realtime session is closed"
    return None
