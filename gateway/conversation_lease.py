"""One Responses turn at a time in a conversation, as at OpenAI: a turn holds a lease on its
conversation from before it reads the items until its own are added (or it fails), and a turn sent
meanwhile is a 400 `conversation_locked` ("retry in a few seconds"). Two turns that overlapped would
each be served without the other and both be added, so the history would no longer be one agent's.

The lease is a row lock in the database (storage/conversations.py), where the conversation is, so it
holds across every replica that shares it. It is taken for `lease_s` and renewed every third of that
while the turn runs; a replica that dies mid-turn holds the conversation one lease at most. Renewal
stops after `max_hold_s` (the longest a turn can take, all retries included): a turn that is never
ended (a bug) cannot hold its conversation for ever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.server.errors import APIError, bad_request
from storage.conversations import ConversationStore
from storage.inserts import describe

log = logging.getLogger("pitstop.gateway")

LEASE_S = 15.0


def locked(conversation_id: str) -> APIError:
    return bad_request(f"another request is operating on conversation {conversation_id!r}: a conversation takes "
                       "one response at a time; retry in a few seconds", "conversation", "conversation_locked")


@dataclass
class ConversationLease:
    """A held lease: `end()` gives it back (once; later calls wait for that)."""

    store: ConversationStore
    conversation_id: str
    lease_s: float
    max_hold_s: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    _renewer: asyncio.Task[None] | None = None
    _renewing: asyncio.Future[bool] | None = None  # a renewal in its thread
    _release: asyncio.Future[None] | None = None

    async def take(self, key_id: str | None) -> tuple[bool, dict[str, Any] | None, list[dict[str, Any]]]:
        """Take the lease and read the conversation's item rows, in one transaction (in a thread): False
        (and the conversation alone, None if there is none) where another turn holds it or the key has none."""
        taken, conversation, rows = await asyncio.to_thread(self.store.lock_and_read, self.conversation_id, key_id,
                                                            self.token, *self._span())
        if taken:
            self._renewer = asyncio.create_task(self._renew(key_id), name=f"lease {self.conversation_id}")
        return taken, conversation, rows

    async def stop_renewing(self) -> None:
        """Before a write that gives the lease back in its own transaction (a renewal landing after it
        would take it again)."""
        if self._renewer is not None:
            self._renewer.cancel()
        if self._renewing is not None:
            with contextlib.suppress(Exception):
                await self._renewing

    def given_back(self) -> None:
        """A write gave it back (storage/conversations.py `add(..., unlock=...)`): `end()` has nothing to do."""
        if self._release is None:
            self._release = asyncio.get_running_loop().create_future()
            self._release.set_result(None)

    async def end(self) -> None:
        """Before the turn's answer, or its error, goes out: the client's next turn must find it free.
        Shielded: a turn ended from a cancelled task (its client left) still gives the lease back."""
        if self._release is None:
            self._release = asyncio.ensure_future(self._give_back())
        await asyncio.shield(self._release)

    async def _give_back(self) -> None:
        await self.stop_renewing()
        try:
            await asyncio.to_thread(self.store.unlock, self.conversation_id, self.token)
        except Exception as exc:  # the lease runs out by itself
            log.warning("releasing conversation %s: %s; it is free within %.0f s", self.conversation_id,
                        describe(exc), self.lease_s)

    def _span(self) -> tuple[datetime, datetime]:
        now = datetime.now(UTC)
        return now, now + timedelta(seconds=self.lease_s)

    async def _renew(self, key_id: str | None) -> None:
        until = time.monotonic() + self.max_hold_s
        while time.monotonic() < until:
            await asyncio.sleep(self.lease_s / 3)
            self._renewing = asyncio.ensure_future(asyncio.to_thread(
                self.store.lock, self.conversation_id, key_id, self.token, *self._span()))
            try:
                if not await asyncio.shield(self._renewing):
                    log.warning("conversation %s: the lease ran out mid-turn and was taken", self.conversation_id)
                    return
            except Exception as exc:  # down: the next renewal, or the lease's end, settles it
                log.warning("renewing the lease on conversation %s: %s", self.conversation_id, describe(exc))
        log.warning("conversation %s: held past %.0f s; no longer renewed", self.conversation_id, self.max_hold_s)
