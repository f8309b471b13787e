"""Row shaping for one table: complete insert rows from caller dicts, and their JSON-lines form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, DateTime, Table, TypeDecorator
from sqlalchemy.engine import Engine

from storage.inserts import idempotent_insert


def _default_value(column: Column[Any]) -> Any:
    default = column.default
    if default is None:
        return None
    if default.is_scalar:
        return default.arg  # type: ignore[attr-defined]
    if default.is_callable:
        return default.arg(None)  # type: ignore[attr-defined]  # SQLAlchemy wraps callables to take a context
    raise ValueError(f"column {column.key!r} has a SQL-side default; give it a value")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class RowShape:
    """Every executemany row must carry the same keys, so rows are completed with defaults up front."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.columns: dict[str, Column[Any]] = {column.key: column for column in table.columns}
        self.key_columns: list[str] = [column.key for column in table.primary_key.columns]
        self._datetime_keys = {key for key, column in self.columns.items() if _is_datetime(column)}

    def complete(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A full row (every column present); raises ValueError for unknown or missing required fields."""
        unknown = row.keys() - self.columns.keys()
        if unknown:
            raise ValueError(f"{self.table.name}: unknown fields {sorted(unknown)}")
        out: dict[str, Any] = {}
        for key, column in self.columns.items():
            value = row.get(key)
            if value is None and column.default is not None:
                value = _default_value(column)
            if value is None and not column.nullable:
                raise ValueError(f"{self.table.name}: field {key!r} is required")
            out[key] = value
        return out

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[key] for key in self.key_columns)

    def to_json(self, row: Mapping[str, Any]) -> str:
        return json.dumps(row, default=_json_default, separators=(",", ":"), ensure_ascii=False)

    def from_json(self, line: str) -> dict[str, Any]:
        row = self.complete(json.loads(line))
        for key in self._datetime_keys:
            if isinstance(row[key], str):
                row[key] = datetime.fromisoformat(row[key])
        return row


def _is_datetime(column: Column[Any]) -> bool:
    column_type = column.type
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    return isinstance(column_type, DateTime)


class KeptRows:
    """A store whose rows are written whole, one at a time, or by a BatchWriter while the database is away:
    `complete` shapes a row as the writer takes it, `put` inserts it (once: a row already there under its
    id is left as it is)."""

    def __init__(self, engine: Engine, table: Table) -> None:
        self._engine = engine
        self._shape = RowShape(table)
        self._insert = idempotent_insert(table, engine.dialect.name)

    def complete(self, row: dict[str, Any]) -> dict[str, Any]:
        """Every column present (ValueError for unknown or missing fields), as the writer takes it."""
        return self._shape.complete(row)

    def put(self, row: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            connection.execute(self._insert, [self._shape.complete(row)])
