"""Stored Responses API answers: put, read (one, or one and its chain's ancestors), delete, purge.

Storage only: who may read what and how long rows live are the gateway's to decide. These calls do
blocking I/O: run them in a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Table, delete, select, update
from sqlalchemy.engine import URL, Connection, Engine

from storage.batch_writer import BatchWriter
from storage.db import as_engine
from storage.leases import lapsed, relaxed_commit, take_over
from storage.models import StoredResponse
from storage.rows import KeptRows
from storage.webhooks import EventOutbox

TABLE: Table = StoredResponse.__table__  # type: ignore[assignment]
ACTIVE = ("queued", "in_progress")  # a background response's statuses before it ends
TAKEN = "taken over"  # what renewing a lease another replica took over says


class StoredResponseWriter(BatchWriter):
    """The way in while the database is down: buffered, spooled to disk, written once it is back."""

    table: ClassVar[Table | None] = TABLE


class ResponseStore(KeptRows):
    def __init__(self, engine: Engine | str | URL, outbox: EventOutbox | None = None) -> None:
        super().__init__(as_engine(engine), TABLE)
        self._outbox = outbox or EventOutbox()  # a background response's end is an event (storage/webhooks.py)

    def get(self, response_id: str, now: datetime) -> dict[str, Any] | None:
        """The row, or None when there is none or it has expired."""
        return self.chain(response_id, now, with_ancestors=False)[0]

    def chain(self, response_id: str, now: datetime,
              with_ancestors: bool = True) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
        """The row and its unexpired ancestors by id, over one connection (one round trip each)."""
        with self._engine.connect() as connection:
            found = self._many(connection, [response_id], now)
            row = found.get(response_id)
            if row is None or not with_ancestors or not row["ancestors"]:
                return row, {}
            return row, self._many(connection, row["ancestors"], now)

    def many(self, response_ids: Iterable[str], now: datetime) -> dict[str, dict[str, Any]]:
        """The unexpired rows among `response_ids`, by id."""
        with self._engine.connect() as connection:
            return self._many(connection, response_ids, now)

    @staticmethod
    def _many(connection: Connection, response_ids: Iterable[str], now: datetime) -> dict[str, dict[str, Any]]:
        ids = list(dict.fromkeys(response_ids))
        if not ids:
            return {}
        query = select(TABLE).where(TABLE.c.id.in_(ids), TABLE.c.expires_at > now)
        return {row.id: dict(row._mapping) for row in connection.execute(query)}

    def advance(self, response_id: str, response: dict[str, Any], lease_until: datetime | None,
                token: str | None) -> bool:
        """A background response's new state (its status is the Response's), while it is still queued or
        in progress and, given a `token`, its lease is that one: False once not (cancelled meanwhile,
        deleted, or taken over by another replica). Without one (a cancel, from any replica) it is not asked."""
        held = () if token is None else (TABLE.c.lease_token == token,)
        return self._outbox.change(self._engine, update(TABLE)
                                   .where(TABLE.c.id == response_id, TABLE.c.status.in_(ACTIVE), *held)
                                   .values(response=response, status=response["status"], lease_until=lease_until),
                                   f"response.{response['status']}", response_id)

    def release(self, response_id: str, response: dict[str, Any], now: datetime, token: str) -> bool:
        """Let a running background response whose lease is `token` go (its replica shuts down): its new
        state, its lease lapsed now, and one takeover given back, since the next is a hand-off, not a
        replica that stopped under it. False once it is not running, or not on that lease."""
        with self._engine.begin() as connection:
            changed = connection.execute(update(TABLE).where(TABLE.c.id == response_id, TABLE.c.status.in_(ACTIVE),
                                                             TABLE.c.lease_token == token)
                                         .values(response=response, status=response["status"], lease_until=now,
                                                 takeovers=TABLE.c.takeovers - 1))
            return changed.rowcount > 0

    def renew(self, response_id: str, lease_until: datetime, token: str) -> str | None:
        """Renew a running background response's lease `token`; its status (None once it is gone, TAKEN once
        another replica took it over): a run sees a cancel made on another replica here."""
        with self._engine.begin() as connection:
            relaxed_commit(connection)
            connection.execute(update(TABLE).where(TABLE.c.id == response_id, TABLE.c.status.in_(ACTIVE),
                                                   TABLE.c.lease_token == token).values(lease_until=lease_until))
            row = connection.execute(select(TABLE.c.status, TABLE.c.lease_token).where(TABLE.c.id == response_id)).first()
        if row is None:
            return None
        return TAKEN if row.status in ACTIVE and row.lease_token != token else row.status

    def lapsed(self, now: datetime) -> list[str]:
        """Background responses still queued or in progress whose lease ran out (their replica stopped, or
        let them go at its shutdown), and that can be run again (their request is kept)."""
        return lapsed(self._engine, TABLE, ACTIVE, now, TABLE.c.request.is_not(None))

    def take_over(self, response_id: str, now: datetime, lease_until: datetime, token: str) -> dict[str, Any] | None:
        """Take a lapsed background response's lease, as `token`, counting the takeover: its row, or None
        where another replica took it first (or it has ended)."""
        if not take_over(self._engine, TABLE, response_id, ACTIVE, now, lease_until, lease_token=token,
                         takeovers=TABLE.c.takeovers + 1):
            return None
        return self.get(response_id, now)

    def delete(self, response_id: str) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(delete(TABLE).where(TABLE.c.id == response_id)).rowcount > 0

    def purge(self, now: datetime) -> int:
        """Delete the expired rows; how many went."""
        with self._engine.begin() as connection:
            return connection.execute(delete(TABLE).where(TABLE.c.expires_at <= now)).rowcount
