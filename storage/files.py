"""Uploaded files (`/v1/files`) and batches (`/v1/batches`): rows in, rows out, pages by keyset.

Storage only: who may read what is the gateway's to decide (gateway/files.py, gateway/batches.py).
These calls do blocking I/O: run them in a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Table, delete, or_, select, tuple_, update
from sqlalchemy.engine import URL, Engine

from storage.db import as_engine
from storage.inserts import idempotent_insert
from storage.leases import lapsed, renew, take_over
from storage.models import Batch, BatchRecord, StoredFile
from storage.rows import RowShape
from storage.webhooks import EventOutbox

FILES: Table = StoredFile.__table__  # type: ignore[assignment]
BATCHES: Table = Batch.__table__  # type: ignore[assignment]
RECORDS: Table = BatchRecord.__table__  # type: ignore[assignment]
RUNNING = ("validating", "in_progress", "finalizing", "cancelling")  # a batch's statuses before it ends
_FILE_INFO = tuple(c for c in FILES.columns if c.key != "content")  # what a listing reads: not the content


class FileStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._shape = RowShape(FILES)

    def put(self, row: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            connection.execute(FILES.insert(), [self._shape.complete(row)])

    def get(self, file_id: str) -> dict[str, Any] | None:
        """The file's row without its content (None: there is none, or it has expired)."""
        with self._engine.connect() as connection:
            row = connection.execute(select(*_FILE_INFO).where(FILES.c.id == file_id, _unexpired())).first()
            return None if row is None else dict(row._mapping)

    def content(self, file_id: str) -> bytes | None:
        with self._engine.connect() as connection:
            return connection.execute(select(FILES.c.content).where(FILES.c.id == file_id, _unexpired())).scalar()

    def purge(self, now: datetime) -> int:
        """Delete the expired files; how many went."""
        with self._engine.begin() as connection:
            return connection.execute(delete(FILES).where(FILES.c.expires_at <= now)).rowcount

    def delete(self, file_id: str) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(delete(FILES).where(FILES.c.id == file_id)).rowcount > 0

    def page(self, key_id: str | None, limit: int, descending: bool, after: str | None,
             purpose: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        where = (_unexpired(),) if purpose is None else (_unexpired(), FILES.c.purpose == purpose)
        return key_page(self._engine, FILES, _FILE_INFO, key_id, limit, descending, after, *where)


def _unexpired() -> ColumnElement[bool]:
    return or_(FILES.c.expires_at.is_(None), FILES.c.expires_at > datetime.now(UTC))


class BatchStore:
    def __init__(self, engine: Engine | str | URL, outbox: EventOutbox | None = None) -> None:
        self._engine = as_engine(engine)
        self._outbox = outbox or EventOutbox()  # a batch's end is an event (storage/webhooks.py)
        self._shape = RowShape(BATCHES)
        self._insert_records = idempotent_insert(RECORDS, self._engine.dialect.name)

    def put(self, row: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            connection.execute(BATCHES.insert(), [self._shape.complete(row)])

    def get(self, batch_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).first()
            return None if row is None else dict(row._mapping)

    def advance(self, batch_id: str, batch: dict[str, Any], lease_until: datetime | None,
                only_from: Sequence[str] = RUNNING) -> bool:
        """The batch's new state (its status is the Batch's), while its status is one of `only_from`."""
        return self._outbox.change(self._engine, update(BATCHES)
                                   .where(BATCHES.c.id == batch_id, BATCHES.c.status.in_(only_from))
                                   .values(batch=batch, status=batch["status"], lease_until=lease_until),
                                   f"batch.{batch['status']}", batch_id)

    def add_records(self, rows: Sequence[dict[str, Any]]) -> None:
        """Finished lines; one already written (by a replica that stopped after writing it) is left as it is."""
        if rows:
            with self._engine.begin() as connection:
                connection.execute(self._insert_records, list(rows))

    def records(self, batch_id: str) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            query = select(RECORDS.c.custom_id, RECORDS.c.failed, RECORDS.c.record).where(RECORDS.c.batch_id == batch_id)
            return [dict(row._mapping) for row in connection.execute(query)]

    def stale(self, now: datetime) -> list[str]:
        """Running batches whose lease ran out: their replica stopped (or let them go at its shutdown)."""
        return lapsed(self._engine, BATCHES, RUNNING, now)

    def take_over(self, batch_id: str, now: datetime, lease_until: datetime) -> bool:
        """Take a stale batch's lease; False where another replica took it first."""
        return take_over(self._engine, BATCHES, batch_id, RUNNING, now, lease_until)

    def renew(self, batch_id: str, lease_until: datetime) -> str | None:
        """Renew a running batch's lease; its status (a cancel made on another replica shows here)."""
        return renew(self._engine, BATCHES, batch_id, RUNNING, lease_until)

    def page(self, key_id: str | None, limit: int, after: str | None) -> tuple[list[dict[str, Any]], bool]:
        """The key's batches, newest first."""
        return key_page(self._engine, BATCHES, tuple(BATCHES.columns), key_id, limit, True, after)


def key_page(engine: Engine, table: Table, columns: Sequence[Column[Any]], key_id: str | None, limit: int,
             descending: bool, after: str | None, *where: Any) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` of the key's rows (those meeting `where` too) after the `after` one, by (created_at,
    id): a page costs the same however many there are."""
    with engine.connect() as connection:
        query = select(*columns).where(table.c.api_key_id == key_id, *where)
        if after is not None:
            mark = connection.execute(select(table.c.created_at).where(table.c.id == after,
                                                                       table.c.api_key_id == key_id)).scalar()
            if mark is not None:
                key, at = tuple_(table.c.created_at, table.c.id), tuple_(mark, after)
                query = query.where(key < at if descending else key > at)
        order = (table.c.created_at.desc(), table.c.id.desc()) if descending else (table.c.created_at, table.c.id)
        rows = [dict(row._mapping) for row in connection.execute(query.order_by(*order).limit(limit + 1))]
        return rows[:limit], len(rows) > limit
