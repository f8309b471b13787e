"""Stored chat completions: put, read, list (a key's, by model and metadata), change metadata, delete,
purge. Storage only: who may read what, and for how long, is the gateway's (gateway/stored_completions.py).
These calls do blocking I/O: run them in a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Table, delete, or_, select, tuple_, update
from sqlalchemy.engine import URL, Engine

from storage.batch_writer import BatchWriter
from storage.db import as_engine
from storage.files import key_page
from storage.models import StoredChatCompletion
from storage.rows import KeptRows

TABLE: Table = StoredChatCompletion.__table__  # type: ignore[assignment]


class StoredCompletionWriter(BatchWriter):
    """The way in while the database is down: buffered, spooled to disk, written once it is back."""

    table: ClassVar[Table | None] = TABLE


class ChatCompletionStore(KeptRows):
    def __init__(self, engine: Engine | str | URL) -> None:
        super().__init__(as_engine(engine), TABLE)

    def get(self, completion_id: str, now: datetime) -> dict[str, Any] | None:
        """The row, or None when there is none or it has expired."""
        with self._engine.connect() as connection:
            row = connection.execute(select(TABLE).where(TABLE.c.id == completion_id, TABLE.c.expires_at > now)).first()
            return None if row is None else dict(row._mapping)

    def page(self, key_id: str | None, now: datetime, limit: int, descending: bool, after: str | None,
             model: str | None = None, metadata: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], bool]:
        """The key's unexpired rows after the `after` one, oldest (or newest) first: those of `model` (what
        answered, or what the request named) and with every pair of `metadata`."""
        where = [TABLE.c.expires_at > now]
        if model is not None:
            where.append(or_(TABLE.c.model == model, TABLE.c.request_model == model))
        for key, value in (metadata or {}).items():
            where.append(TABLE.c.metadata[key].as_string() == value)
        return key_page(self._engine, TABLE, tuple(TABLE.columns), key_id, limit, descending, after, *where)

    def every(self, since: datetime | None = None, model: str | None = None, metadata: dict[str, str] | None = None,
              chunk: int = 1000) -> Iterator[dict[str, Any]]:
        """Every key's unexpired rows, oldest first (those since `since`, of `model`, with `metadata`), read
        `chunk` at a time: what an export walks."""
        where = [TABLE.c.expires_at > datetime.now(UTC)]
        if since is not None:
            where.append(TABLE.c.created_at >= since)
        if model is not None:
            where.append(or_(TABLE.c.model == model, TABLE.c.request_model == model))
        for key, value in (metadata or {}).items():
            where.append(TABLE.c.metadata[key].as_string() == value)
        mark: tuple[datetime, str] | None = None
        while True:
            query = select(TABLE).where(*where)
            if mark is not None:
                query = query.where(tuple_(TABLE.c.created_at, TABLE.c.id) > tuple_(*mark))
            with self._engine.connect() as connection:
                rows = [dict(row._mapping) for row in connection.execute(
                    query.order_by(TABLE.c.created_at, TABLE.c.id).limit(chunk))]
            yield from rows
            if len(rows) < chunk:
                return
            mark = (rows[-1]["created_at"], rows[-1]["id"])

    def set_metadata(self, completion_id: str, metadata: dict[str, str]) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(update(TABLE).where(TABLE.c.id == completion_id)
                                      .values(metadata=metadata)).rowcount > 0

    def delete(self, completion_id: str) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(delete(TABLE).where(TABLE.c.id == completion_id)).rowcount > 0

    def purge(self, now: datetime) -> int:
        """Delete the expired rows; how many went."""
        with self._engine.begin() as connection:
            return connection.execute(delete(TABLE).where(TABLE.c.expires_at <= now)).rowcount
