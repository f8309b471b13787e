"""Inserts that tolerate retries, and telling a database outage from a bad row."""

from __future__ import annotations

from sqlalchemy import Table, insert
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

UPSERT_DIALECTS = ("postgresql", "sqlite")
# The database is unreachable, restarting, locked or out of connections: worth retrying.
TRANSIENT_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


# SQLSTATEs of a deployment that is not ready yet (migrations not run, grants missing): retry and
# keep the rows rather than reject every one of them.
NOT_READY_SQLSTATES = {"42P01", "42501", "3D000"}  # undefined_table, insufficient_privilege, no database


def is_transient(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if getattr(error.orig, "sqlstate", None) in NOT_READY_SQLSTATES:
            return True
    return isinstance(error, TRANSIENT_ERRORS)


def describe(error: BaseException) -> str:
    """One line, without the SQL and bound parameters SQLAlchemy appends (they may hold prompts)."""
    cause = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def idempotent_insert(table: Table, dialect_name: str) -> Insert:
    """INSERT that silently skips rows whose primary key already exists (plain INSERT elsewhere)."""
    keys = list(table.primary_key.columns)
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    return insert(table)
