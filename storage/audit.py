"""The admin audit log's records: written in the same transaction as the change they record (a key's, a
team's, a webhook endpoint's), so a change that commits has its row and a failed row undoes the change; listed newest first with
OpenAI's filters and cursors (gateway/audit_endpoints.py). Storage only; never given a secret.

Rows are kept unless `storage.audit_retention_days` is set (storage/retention.py), a horizon of their own:
the outcome log's `storage.retention_days` does not reach them, as an audit trail that forgot with the traffic
would answer the wrong question."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.orm import Session

from storage.db import as_engine, session_factory
from storage.models import AuditLog
from storage.models.audit import ID_PREFIX

Actor = dict[str, Any]  # OpenAI's actor object: {"type": "api_key", "api_key": {...}} or {"type": "session", ...}


def record(session: Session | Connection, actor: Actor | None, type_: str, resource_id: str | None,
           payload: dict[str, Any]) -> None:
    """Add the event to the transaction of `session` (an ORM session or a Core connection); nothing where
    `actor` is None (a caller that audits nothing, as the storage tests' direct calls). A row that cannot be
    written fails here, inside the change's transaction."""
    if actor is None:
        return
    session.execute(insert(AuditLog).values(type=type_, effective_at=int(time.time()), actor=actor,
                                            resource_id=resource_id, payload=payload))


def seq_of(public_id: str) -> int:
    """`audit_log-<seq>` -> seq; ValueError for anything else."""
    if not public_id.startswith(ID_PREFIX) or not public_id[len(ID_PREFIX):].isdigit():
        raise ValueError(f"{public_id!r} is not an audit log id (audit_log-<n>)")
    return int(public_id[len(ID_PREFIX):])


@dataclass(frozen=True)
class AuditQuery:
    """OpenAI's list parameters: types, resources, `effective_at` bounds (gt, gte, lt, lte), a page of
    `limit` after (older than) or before (newer than) a row's id."""

    event_types: Sequence[str] = ()
    resource_ids: Sequence[str] = ()
    effective_at: dict[str, int] = field(default_factory=dict)
    limit: int = 20
    after: str | None = None
    before: str | None = None


class AuditStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._session = session_factory(self._engine)

    def record(self, actor: Actor, type_: str, resource_id: str | None, payload: dict[str, Any]) -> None:
        """An event of a change kept outside the database (a config reload), in its own transaction."""
        with self._session.begin() as session:
            record(session, actor, type_, resource_id, payload)

    def list(self, query: AuditQuery) -> tuple[list[AuditLog], bool]:
        """A page newest first, and whether more lie beyond it in the direction paged (ValueError for a
        cursor that is not an id)."""
        where = []
        if query.event_types:
            where.append(AuditLog.type.in_(query.event_types))
        if query.resource_ids:
            where.append(AuditLog.resource_id.in_(query.resource_ids))
        bounds = {"gt": AuditLog.effective_at.__gt__, "gte": AuditLog.effective_at.__ge__,
                  "lt": AuditLog.effective_at.__lt__, "lte": AuditLog.effective_at.__le__}
        where += [bounds[op](value) for op, value in query.effective_at.items()]
        statement = select(AuditLog).where(*where)
        if query.before is not None:  # the page just newer than the cursor, shown newest first
            statement = statement.where(AuditLog.seq > seq_of(query.before)).order_by(AuditLog.seq)
        else:
            if query.after is not None:
                statement = statement.where(AuditLog.seq < seq_of(query.after))
            statement = statement.order_by(AuditLog.seq.desc())
        with self._session() as session:
            rows = list(session.scalars(statement.limit(query.limit + 1)))
        more = len(rows) > query.limit
        rows = rows[:query.limit]
        return (rows[::-1] if query.before is not None else rows), more
