"""Vector stores (`/v1/vector_stores`): the stores, the files in them with their ingestion's status and
lease, and the files' chunks with their embeddings. A store's `version` moves in the same transaction
as its chunks, so a search index built from it knows when it is stale.

Storage only: who may read what is the gateway's to decide (gateway/vector_stores.py). These calls do
blocking I/O: run them in a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Table, delete, func, insert, select, tuple_, update
from sqlalchemy.engine import URL, Connection, Engine

from storage.db import as_engine
from storage.files import key_page
from storage.leases import relaxed_commit
from storage.models import VectorStore, VectorStoreChunk, VectorStoreFile
from storage.rows import RowShape

STORES: Table = VectorStore.__table__  # type: ignore[assignment]
FILES: Table = VectorStoreFile.__table__  # type: ignore[assignment]
CHUNKS: Table = VectorStoreChunk.__table__  # type: ignore[assignment]
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class StoredChunks:
    """A store's chunks as a search index reads them: row i is file_ids[i]'s chunk positions[i]."""

    version: int
    file_ids: list[str]
    positions: list[int]
    texts: list[str]
    embeddings: np.ndarray  # [chunks, dim] float32


class VectorStoreStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._stores = RowShape(STORES)
        self._files = RowShape(FILES)

    # --- stores
    def put_store(self, row: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            connection.execute(STORES.insert(), [self._stores.complete(row)])

    def get_store(self, store_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(STORES).where(STORES.c.id == store_id)).first()
            return None if row is None else dict(row._mapping)

    def update_store(self, store_id: str, values: dict[str, Any]) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(update(STORES).where(STORES.c.id == store_id).values(**values)).rowcount > 0

    def touch(self, store_ids: Sequence[str], now: datetime) -> None:
        """Searched now: its expiry counts from here."""
        with self._engine.begin() as connection:
            relaxed_commit(connection)
            connection.execute(update(STORES).where(STORES.c.id.in_(store_ids)).values(last_active_at=now))

    def delete_store(self, store_id: str) -> bool:
        with self._engine.begin() as connection:
            connection.execute(delete(CHUNKS).where(CHUNKS.c.vector_store_id == store_id))
            connection.execute(delete(FILES).where(FILES.c.vector_store_id == store_id))
            return connection.execute(delete(STORES).where(STORES.c.id == store_id)).rowcount > 0

    def page_stores(self, key_id: str | None, limit: int, descending: bool,
                    after: str | None) -> tuple[list[dict[str, Any]], bool]:
        return key_page(self._engine, STORES, tuple(STORES.columns), key_id, limit, descending, after)

    def file_counts(self, store_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Per store: how many of its files are in each status, and `usage_bytes` of the completed ones."""
        counts: dict[str, dict[str, int]] = {sid: dict.fromkeys((*FILE_STATUSES, "usage_bytes"), 0) for sid in store_ids}
        with self._engine.connect() as connection:
            query = (select(FILES.c.vector_store_id, FILES.c.status, func.count(), func.sum(FILES.c.usage_bytes))
                     .where(FILES.c.vector_store_id.in_(store_ids))
                     .group_by(FILES.c.vector_store_id, FILES.c.status))
            for store_id, status, count, usage in connection.execute(query):
                counts[store_id][status] = count
                if status == "completed":
                    counts[store_id]["usage_bytes"] = int(usage or 0)
        return counts

    # --- files in a store
    def put_file(self, row: dict[str, Any]) -> bool:
        """Add a file to a store; False where it is there already (its row is left as it is)."""
        with self._engine.begin() as connection:
            if self._file(connection, row["vector_store_id"], row["file_id"]) is not None:
                return False
            connection.execute(FILES.insert(), [self._files.complete(row)])
            return True

    def get_file(self, store_id: str, file_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            return self._file(connection, store_id, file_id)

    @staticmethod
    def _file(connection: Connection, store_id: str, file_id: str) -> dict[str, Any] | None:
        row = connection.execute(select(FILES).where(FILES.c.vector_store_id == store_id,
                                                     FILES.c.file_id == file_id)).first()
        return None if row is None else dict(row._mapping)

    def page_files(self, store_id: str, limit: int, descending: bool, after: str | None, status: str | None = None,
                   batch_id: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` of the store's files after the `after` one, by (created_at, file_id)."""
        where = [FILES.c.vector_store_id == store_id]
        if status is not None:
            where.append(FILES.c.status == status)
        if batch_id is not None:
            where.append(FILES.c.batch_id == batch_id)
        with self._engine.connect() as connection:
            query = select(FILES).where(*where)
            if after is not None:
                mark = connection.execute(select(FILES.c.created_at).where(
                    FILES.c.vector_store_id == store_id, FILES.c.file_id == after)).scalar()
                if mark is not None:
                    key, at = tuple_(FILES.c.created_at, FILES.c.file_id), tuple_(mark, after)
                    query = query.where(key < at if descending else key > at)
            order = (FILES.c.created_at.desc(), FILES.c.file_id.desc()) if descending else \
                (FILES.c.created_at, FILES.c.file_id)
            rows = [dict(row._mapping) for row in connection.execute(query.order_by(*order).limit(limit + 1))]
            return rows[:limit], len(rows) > limit

    def batch_counts(self, store_id: str, batch_id: str) -> dict[str, int]:
        with self._engine.connect() as connection:
            query = (select(FILES.c.status, func.count()).where(FILES.c.vector_store_id == store_id,
                                                                 FILES.c.batch_id == batch_id)
                     .group_by(FILES.c.status))
            counts = dict.fromkeys(FILE_STATUSES, 0)
            counts.update({status: count for status, count in connection.execute(query)})
            return counts

    def update_file(self, store_id: str, file_id: str, values: dict[str, Any],
                    only_from: Sequence[str] = FILE_STATUSES) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(update(FILES).where(
                FILES.c.vector_store_id == store_id, FILES.c.file_id == file_id, FILES.c.status.in_(only_from))
                .values(**values)).rowcount > 0

    def cancel_batch(self, store_id: str, batch_id: str) -> int:
        """The batch's files not yet ingested are cancelled; how many."""
        with self._engine.begin() as connection:
            return connection.execute(update(FILES).where(
                FILES.c.vector_store_id == store_id, FILES.c.batch_id == batch_id, FILES.c.status == "in_progress")
                .values(status="cancelled", lease_until=None)).rowcount

    def delete_file(self, store_id: str, file_id: str) -> bool:
        """The file leaves the store (the file itself stays in `/v1/files`), its chunks with it."""
        with self._engine.begin() as connection:
            removed = connection.execute(delete(CHUNKS).where(CHUNKS.c.vector_store_id == store_id,
                                                              CHUNKS.c.file_id == file_id)).rowcount
            if removed:
                self._bump(connection, store_id)
            return connection.execute(delete(FILES).where(FILES.c.vector_store_id == store_id,
                                                          FILES.c.file_id == file_id)).rowcount > 0

    def delete_file_everywhere(self, file_id: str) -> list[str]:
        """The file leaves every store that holds it (it was deleted from `/v1/files`); those stores."""
        with self._engine.begin() as connection:
            store_ids = list(connection.execute(select(FILES.c.vector_store_id).where(FILES.c.file_id == file_id))
                             .scalars())
            for store_id in store_ids:
                if connection.execute(delete(CHUNKS).where(CHUNKS.c.vector_store_id == store_id,
                                                           CHUNKS.c.file_id == file_id)).rowcount:
                    self._bump(connection, store_id)
            connection.execute(delete(FILES).where(FILES.c.file_id == file_id))
            return store_ids

    def finish_file(self, store_id: str, file_id: str, chunks: Sequence[tuple[str, np.ndarray]],
                    usage_bytes: int) -> bool:
        """The file's chunks (text, float32 embedding) in place of any it had, and the file completed, in
        one transaction; False (nothing written) where it is no longer in progress (cancelled, deleted)."""
        with self._engine.begin() as connection:
            done = connection.execute(update(FILES).where(
                FILES.c.vector_store_id == store_id, FILES.c.file_id == file_id, FILES.c.status == "in_progress")
                .values(status="completed", usage_bytes=usage_bytes, lease_until=None, last_error=None))
            if not done.rowcount:  # nothing written yet
                return False
            connection.execute(delete(CHUNKS).where(CHUNKS.c.vector_store_id == store_id, CHUNKS.c.file_id == file_id))
            if chunks:
                connection.execute(insert(CHUNKS), [
                    {"vector_store_id": store_id, "file_id": file_id, "position": i, "text": text,
                     "embedding": np.asarray(vector, dtype=np.float32).tobytes()}
                    for i, (text, vector) in enumerate(chunks)])
            self._bump(connection, store_id)
            return True

    @staticmethod
    def _bump(connection: Connection, store_id: str) -> None:
        connection.execute(update(STORES).where(STORES.c.id == store_id).values(version=STORES.c.version + 1))

    # --- ingestion leases
    def stale_files(self, now: datetime) -> list[tuple[str, str]]:
        """(store, file) of ingestions whose lease ran out: their replica stopped."""
        with self._engine.connect() as connection:
            query = select(FILES.c.vector_store_id, FILES.c.file_id).where(
                FILES.c.status == "in_progress", FILES.c.lease_until <= now)
            return [(store_id, file_id) for store_id, file_id in connection.execute(query)]

    def take_over_file(self, store_id: str, file_id: str, now: datetime, lease_until: datetime) -> bool:
        with self._engine.begin() as connection:
            relaxed_commit(connection)
            return connection.execute(update(FILES).where(
                FILES.c.vector_store_id == store_id, FILES.c.file_id == file_id, FILES.c.status == "in_progress",
                FILES.c.lease_until <= now).values(lease_until=lease_until)).rowcount > 0

    def renew_file(self, store_id: str, file_id: str, lease_until: datetime) -> bool:
        """False where the ingestion should stop: the file was cancelled or left the store."""
        with self._engine.begin() as connection:
            relaxed_commit(connection)
            return connection.execute(update(FILES).where(
                FILES.c.vector_store_id == store_id, FILES.c.file_id == file_id, FILES.c.status == "in_progress")
                .values(lease_until=lease_until)).rowcount > 0

    # --- search
    def version(self, store_id: str) -> int | None:
        with self._engine.connect() as connection:
            return connection.execute(select(STORES.c.version).where(STORES.c.id == store_id)).scalar()

    def completed_files(self, store_id: str) -> tuple[int, dict[str, datetime]]:
        """The store's version, then its completed files with when each was added (a file removed and
        added again is another ingestion): what a search index checks itself against."""
        with self._engine.connect() as connection:
            version = connection.execute(select(STORES.c.version).where(STORES.c.id == store_id)).scalar() or 0
            query = select(FILES.c.file_id, FILES.c.created_at).where(FILES.c.vector_store_id == store_id,
                                                                      FILES.c.status == "completed")
            return version, {file_id: created_at for file_id, created_at in connection.execute(query)}

    def chunks(self, store_id: str, dim: int, file_ids: Sequence[str] | None = None) -> StoredChunks:
        """The chunks of the store's completed files (of `file_ids` only, when given), by file and
        position, with the version they are at (`dim`: the width of none)."""
        with self._engine.connect() as connection:
            version = connection.execute(select(STORES.c.version).where(STORES.c.id == store_id)).scalar() or 0
            completed = select(FILES.c.file_id).where(FILES.c.vector_store_id == store_id,
                                                      FILES.c.status == "completed")
            query = (select(CHUNKS.c.file_id, CHUNKS.c.position, CHUNKS.c.text, CHUNKS.c.embedding)
                     .where(CHUNKS.c.vector_store_id == store_id, CHUNKS.c.file_id.in_(completed))
                     .order_by(CHUNKS.c.file_id, CHUNKS.c.position))
            if file_ids is not None:
                query = query.where(CHUNKS.c.file_id.in_(list(file_ids)))
            rows = connection.execute(query).all()
        if rows:  # every chunk of a store has its embedder's width
            dim = len(rows[0].embedding) // 4
        embeddings = np.frombuffer(b"".join(row.embedding for row in rows), dtype=np.float32).reshape(len(rows), dim) \
            if rows else np.zeros((0, dim), dtype=np.float32)
        return StoredChunks(version, [row.file_id for row in rows], [row.position for row in rows],
                            [row.text for row in rows], embeddings)

    def attributes(self, store_id: str) -> dict[str, dict[str, Any]]:
        """Each file's attributes (for search filters)."""
        with self._engine.connect() as connection:
            query = select(FILES.c.file_id, FILES.c.attributes).where(FILES.c.vector_store_id == store_id)
            return {file_id: attributes or {} for file_id, attributes in connection.execute(query)}
