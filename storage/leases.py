"""Leases on rows (a conversation's turn, a background response's run, a batch's run): the replica
holding one renews it while its work runs, so a replica that stops holds the row one lease at most."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Connection, Engine


def relaxed_commit(connection: Connection) -> None:
    """A lease is soft state: on PostgreSQL its transaction's commit need not wait for the disk (one lost
    in a crash frees its row, which the crash freed anyway)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def renew(engine: Engine, table: Table, row_id: str, running: Sequence[str], lease_until: datetime) -> str | None:
    """Renew the lease of a row whose `status` is one of `running`; its status (None once it is gone): the
    holder sees there a cancel made on another replica."""
    with engine.begin() as connection:
        relaxed_commit(connection)
        connection.execute(update(table).where(table.c.id == row_id, table.c.status.in_(running))
                           .values(lease_until=lease_until))
        return connection.execute(select(table.c.status).where(table.c.id == row_id)).scalar()


def lapsed(engine: Engine, table: Table, running: Sequence[str], now: datetime, *where: Any) -> list[str]:
    """The ids of rows still `running` whose lease ran out: their replica stopped, or let them go."""
    with engine.connect() as connection:
        query = select(table.c.id).where(table.c.status.in_(running), table.c.lease_until <= now, *where)
        return list(connection.execute(query).scalars())


def take_over(engine: Engine, table: Table, row_id: str, running: Sequence[str], now: datetime,
              lease_until: datetime, **values: Any) -> bool:
    """Take the lapsed lease of a row still `running` (setting `values` too); False where another replica
    took it first, or it is no longer running."""
    with engine.begin() as connection:
        relaxed_commit(connection)
        taken = connection.execute(update(table).where(table.c.id == row_id, table.c.status.in_(running),
                                                       table.c.lease_until <= now)
                                   .values(lease_until=lease_until, **values))
        return taken.rowcount > 0
