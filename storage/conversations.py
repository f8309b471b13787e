"""Conversations API state: conversations (owner, metadata) and their items, in `seq` order.

Storage only: who may read what is the gateway's to decide (gateway/conversations.py). These calls do
blocking I/O: run them in a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Table, delete, or_, select, tuple_, update
from sqlalchemy.engine import URL, Connection, Engine, Row

from storage.batch_writer import BatchWriter
from storage.db import as_engine
from storage.inserts import idempotent_insert
from storage.leases import relaxed_commit
from storage.models import Conversation, ConversationItem
from storage.rows import RowShape

CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
ITEMS: Table = ConversationItem.__table__  # type: ignore[assignment]


# What a read needs of an item row: building a dict of every column (its timestamp parsed) per row cost
# a quarter of a turn in a 5,000-item conversation.
_ITEM_KEY = (ITEMS.c.id, ITEMS.c.seq, ITEMS.c.item)


def _item_rows(result: Iterable[Row[Any]]) -> list[dict[str, Any]]:
    return [{"id": item_id, "seq": seq, "item": item} for item_id, seq, item in result]


class ConversationItemWriter(BatchWriter):
    """The way in for a turn's items while the database is down: buffered, spooled, written once it is
    back (idempotent on (conversation, item id))."""

    table: ClassVar[Table | None] = ITEMS


@dataclass
class ItemPage:
    conversation: dict[str, Any] | None  # None: no such conversation
    rows: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False
    after_found: bool = True  # False: the `after` item is not in the conversation


class ConversationStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._items = RowShape(ITEMS)
        self._conversations = RowShape(CONVERSATIONS)
        self._insert_items = idempotent_insert(ITEMS, self._engine.dialect.name)

    def complete_items(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every column present (ValueError for unknown or missing fields), as the writer takes them."""
        return [self._items.complete(row) for row in rows]

    def create(self, conversation: dict[str, Any], items: Sequence[dict[str, Any]]) -> None:
        """A new conversation and its first items, in one transaction."""
        with self._engine.begin() as connection:
            connection.execute(CONVERSATIONS.insert(), [self._conversations.complete(conversation)])
            self._add(connection, items)

    def add(self, items: Sequence[dict[str, Any]], unlock: tuple[str, str] | None = None) -> None:
        """Insert item rows; one already stored under its (conversation, id) is left as it is. With
        `unlock` (conversation, token), the lease is given back in the same transaction."""
        with self._engine.begin() as connection:
            self._add(connection, items)
            if unlock is not None:
                self._unlock(connection, *unlock)

    def _add(self, connection: Connection, items: Sequence[dict[str, Any]]) -> None:
        if items:
            connection.execute(self._insert_items, self.complete_items(items))

    def get(self, conversation_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            return self._get(connection, conversation_id)

    @staticmethod
    def _get(connection: Connection, conversation_id: str) -> dict[str, Any] | None:
        row = connection.execute(select(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id)).first()
        return None if row is None else dict(row._mapping)

    def with_items(self, conversation_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The conversation and all its item rows in order, over one connection (None, [] if none)."""
        with self._engine.connect() as connection:
            return self._with_items(connection, conversation_id)

    def _with_items(self, connection: Connection,
                    conversation_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        conversation = self._get(connection, conversation_id)
        if conversation is None:
            return None, []
        query = select(*_ITEM_KEY).where(ITEMS.c.conversation_id == conversation_id).order_by(ITEMS.c.seq, ITEMS.c.id)
        return conversation, _item_rows(connection.execute(query))

    def page(self, conversation_id: str, limit: int, descending: bool, after: str | None = None) -> ItemPage:
        """Up to `limit` items after the `after` item, in `seq` order or its reverse (keyset paging on the
        (conversation, seq) index: a page costs the same however long the conversation is)."""
        with self._engine.connect() as connection:
            conversation = self._get(connection, conversation_id)
            if conversation is None:
                return ItemPage(None)
            query = select(*_ITEM_KEY).where(ITEMS.c.conversation_id == conversation_id)
            if after is not None:
                mark = connection.execute(select(ITEMS.c.seq).where(ITEMS.c.conversation_id == conversation_id,
                                                                    ITEMS.c.id == after)).scalar()
                if mark is None:
                    return ItemPage(conversation, after_found=False)
                key, at = tuple_(ITEMS.c.seq, ITEMS.c.id), tuple_(mark, after)
                query = query.where(key < at if descending else key > at)
            order = (ITEMS.c.seq.desc(), ITEMS.c.id.desc()) if descending else (ITEMS.c.seq, ITEMS.c.id)
            rows = _item_rows(connection.execute(query.order_by(*order).limit(limit + 1)))
            return ItemPage(conversation, rows[:limit], len(rows) > limit)

    def item(self, conversation_id: str, item_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The conversation and one of its item rows (None where there is none), over one connection."""
        with self._engine.connect() as connection:
            conversation = self._get(connection, conversation_id)
            if conversation is None:
                return None, None
            row = connection.execute(select(ITEMS).where(ITEMS.c.conversation_id == conversation_id,
                                                         ITEMS.c.id == item_id)).first()
            return conversation, None if row is None else dict(row._mapping)

    def lock(self, conversation_id: str, key_id: str | None, token: str, now: datetime, until: datetime) -> bool:
        """Take (or, with the same token, renew) the lease on the key's conversation until `until`: False
        where another token holds one that has not expired, or the key has no such conversation."""
        with self._engine.begin() as connection:
            return self._lock(connection, conversation_id, key_id, token, now, until)

    def lock_and_read(self, conversation_id: str, key_id: str | None, token: str, now: datetime,
                      until: datetime) -> tuple[bool, dict[str, Any] | None, list[dict[str, Any]]]:
        """`lock`, then the conversation and its item rows (`with_items`), in one transaction; the
        conversation without its items when the lease is not taken (None: there is none)."""
        with self._engine.begin() as connection:
            if not self._lock(connection, conversation_id, key_id, token, now, until):
                return False, self._get(connection, conversation_id), []
            return True, *self._with_items(connection, conversation_id)

    def _lock(self, connection: Connection, conversation_id: str, key_id: str | None, token: str, now: datetime,
              until: datetime) -> bool:
        relaxed_commit(connection)
        free = or_(CONVERSATIONS.c.locked_until.is_(None), CONVERSATIONS.c.locked_until <= now,
                   CONVERSATIONS.c.lock_token == token)
        taken = connection.execute(update(CONVERSATIONS)
                                   .where(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.api_key_id == key_id,
                                          free)
                                   .values(lock_token=token, locked_until=until))
        return taken.rowcount > 0

    def unlock(self, conversation_id: str, token: str) -> None:
        """Give the lease back (a no-op where it has expired and another token has taken it since)."""
        with self._engine.begin() as connection:
            relaxed_commit(connection)
            self._unlock(connection, conversation_id, token)

    @staticmethod
    def _unlock(connection: Connection, conversation_id: str, token: str) -> None:
        connection.execute(update(CONVERSATIONS)
                           .where(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.lock_token == token)
                           .values(lock_token=None, locked_until=None))

    def set_metadata(self, conversation_id: str, metadata: dict[str, str]) -> bool:
        with self._engine.begin() as connection:
            changed = connection.execute(update(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id)
                                         .values(metadata=metadata))
            return changed.rowcount > 0

    def delete(self, conversation_id: str) -> bool:
        """The conversation and its items."""
        with self._engine.begin() as connection:
            connection.execute(delete(ITEMS).where(ITEMS.c.conversation_id == conversation_id))
            gone = connection.execute(delete(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id))
            return gone.rowcount > 0

    def purge_orphans(self) -> int:
        """Delete items whose conversation is gone: a deletion can land while a turn's items wait in the
        writer (the database was away), which writes them afterwards. How many went."""
        orphaned = ~select(CONVERSATIONS.c.id).where(CONVERSATIONS.c.id == ITEMS.c.conversation_id).exists()
        with self._engine.begin() as connection:
            return connection.execute(delete(ITEMS).where(orphaned)).rowcount

    def delete_item(self, conversation_id: str, item_id: str) -> bool:
        with self._engine.begin() as connection:
            gone = connection.execute(delete(ITEMS).where(ITEMS.c.conversation_id == conversation_id,
                                                          ITEMS.c.id == item_id))
            return gone.rowcount > 0
