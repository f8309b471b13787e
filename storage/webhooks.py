"""Webhook endpoints and the outbox of deliveries to them.

A change that makes an event (a background response or a batch ending) calls `queue_event` inside its
own transaction: the deliveries commit with the change or not at all. Replicas then claim due
deliveries (`claim`): a claim is an UPDATE that only succeeds on rows nobody holds, so a delivery is sent
by one replica at a time; a replica that stops holding one lets it go when `claimed_until` passes.

Storage only: signing and sending are gateway/webhooks.py's. These calls do blocking I/O: run them in a
thread, never on the event loop."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, or_, select, update
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.sql import Executable

from storage.audit import Actor, record
from storage.db import as_engine
from storage.leases import relaxed_commit
from storage.models import WebhookDelivery, WebhookEndpoint

ENDPOINTS: Table = WebhookEndpoint.__table__  # type: ignore[assignment]
DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# The events Pitstop sends: a background response's or a batch's end, by its status, in OpenAI's names;
# and Pitstop's own, a key's spend crossing a share of its budget (gateway/budget_alerts.py).
BUDGET_EVENT = "budget.threshold_crossed"
EVENT_TYPES = ("response.completed", "response.failed", "response.cancelled", "response.incomplete",
               "batch.completed", "batch.failed", "batch.cancelled", "batch.expired", BUDGET_EVENT)


@dataclass(frozen=True)
class Due:
    """A claimed delivery, with what sending it needs."""

    id: str
    event_id: str
    event_type: str
    object_id: str
    event_created_at: int
    data: dict[str, Any] | None  # the event's `data`, where it is more than `{"id": object_id}`
    attempts: int  # before this one
    url: str
    # The current secret first, then one still honoured after a rotation; none for a URL of the config's,
    # which is sent `data` as it is, unsigned (a Slack incoming webhook takes it).
    secrets: tuple[str, ...]

    @property
    def raw(self) -> bool:
        return not self.secrets


def signing_secrets(endpoint: Mapping[str, Any], now: datetime) -> tuple[str, ...]:
    """An endpoint's secrets to sign with: its own, and the one it had until a rotation that kept it."""
    until = endpoint["previous_secret_until"]
    kept = endpoint["previous_secret"] is not None and until is not None and until > now
    return (endpoint["secret"], endpoint["previous_secret"]) if kept else (endpoint["secret"],)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class EventOutbox:
    """How stores queue the events their changes make. `wake` is called once a transaction that queued
    some has committed, so this replica's sender need not wait for its next look."""

    def __init__(self) -> None:
        self.wake: Callable[[], None] = lambda: None

    def change(self, engine: Engine, statement: Executable, event_type: str, object_id: str) -> bool:
        """Run `statement` (an UPDATE of one row) and, where it changed the row, queue `event_type` about
        `object_id` in the same transaction; whether it changed it."""
        with engine.begin() as connection:
            changed = connection.execute(statement).rowcount > 0
            queued = changed and self.queue_event(connection, event_type, object_id)
        if queued:
            self.wake()
        return changed

    @staticmethod
    def queue_event(connection: Connection, event_type: str, object_id: str, data: dict[str, Any] | None = None,
                    urls: Sequence[str] = ()) -> int:
        """Queue `event_type` about `object_id` (happening now) for every endpoint that takes it, and for
        `urls`, in `connection`'s transaction; how many deliveries that made (none for a change that is
        no event)."""
        if event_type not in EVENT_TYPES:
            return 0
        now = datetime.now(UTC)
        endpoints = connection.execute(select(ENDPOINTS.c.id, ENDPOINTS.c.event_types)).all()
        targets = [(row.id, None) for row in endpoints if event_type in row.event_types]
        targets += [(None, url) for url in urls]
        if targets:
            event_id = new_id("evt")
            connection.execute(DELIVERIES.insert(), [
                {"id": new_id("wh"), "endpoint_id": endpoint_id, "url": url, "event_id": event_id,
                 "event_type": event_type, "object_id": object_id, "event_created_at": int(now.timestamp()),
                 "data": data, "status": PENDING, "attempts": 0, "next_attempt_at": now}
                for endpoint_id, url in targets])
        return len(targets)


class WebhookStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)

    # Endpoints: few, read whole.

    # With an `actor`, each change writes its audit event in its transaction (storage/audit.py), never a secret.

    def add_endpoint(self, row: dict[str, Any], actor: Actor | None = None) -> None:
        with self._engine.begin() as connection:
            connection.execute(ENDPOINTS.insert(), [row])
            record(connection, actor, "webhook_endpoint.created", row["id"], {"id": row["id"], "data": {
                name: row.get(name) for name in ("name", "url", "event_types")}})

    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)).first()
            return None if row is None else dict(row._mapping)

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint, newest first."""
        with self._engine.connect() as connection:
            query = select(ENDPOINTS).order_by(ENDPOINTS.c.created_at.desc(), ENDPOINTS.c.id.desc())
            return [dict(row._mapping) for row in connection.execute(query)]

    def change_endpoint(self, endpoint_id: str, values: dict[str, Any], actor: Actor | None = None,
                        event: tuple[str, dict[str, Any]] | None = None) -> bool:
        """`event`: the audit event's type and payload, where `actor` is given."""
        with self._engine.begin() as connection:
            changed = connection.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)
                                         .values(**values)).rowcount > 0
            if changed and event is not None:
                record(connection, actor, event[0], endpoint_id, event[1])
            return changed

    def delete_endpoint(self, endpoint_id: str, actor: Actor | None = None) -> bool:
        """The endpoint and the deliveries still on their way to it."""
        with self._engine.begin() as connection:
            connection.execute(delete(DELIVERIES).where(DELIVERIES.c.endpoint_id == endpoint_id,
                                                        DELIVERIES.c.status == PENDING))
            deleted = connection.execute(delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)).rowcount > 0
            if deleted:
                record(connection, actor, "webhook_endpoint.deleted", endpoint_id, {"id": endpoint_id})
            return deleted

    # Deliveries.

    def queue(self, event_type: str, object_id: str, data: dict[str, Any] | None, urls: Sequence[str]) -> int:
        """An event no other change carries, in a transaction of its own (EventOutbox.queue_event)."""
        with self._engine.begin() as connection:
            return EventOutbox.queue_event(connection, event_type, object_id, data, urls)

    def claim(self, now: datetime, claimed_until: datetime, token: str, limit: int) -> list[Due]:
        """Hold up to `limit` due deliveries nobody holds, as `token`, until `claimed_until`; them, oldest
        first. Two replicas claiming at once get different ones: the UPDATE re-checks that each is free."""
        free = or_(DELIVERIES.c.claimed_until.is_(None), DELIVERIES.c.claimed_until <= now)
        with self._engine.begin() as connection:
            relaxed_commit(connection)
            due = select(DELIVERIES.c.id).where(DELIVERIES.c.status == PENDING, DELIVERIES.c.next_attempt_at <= now,
                                                free).order_by(DELIVERIES.c.next_attempt_at).limit(limit)
            ids = list(connection.execute(due).scalars())
            if not ids:
                return []
            connection.execute(update(DELIVERIES).where(DELIVERIES.c.id.in_(ids), DELIVERIES.c.status == PENDING, free)
                               .values(claimed_until=claimed_until, claim_token=token))
            rows = connection.execute(
                select(DELIVERIES, ENDPOINTS.c.url.label("endpoint_url"), ENDPOINTS.c.secret,
                       ENDPOINTS.c.previous_secret, ENDPOINTS.c.previous_secret_until)
                .outerjoin(ENDPOINTS, ENDPOINTS.c.id == DELIVERIES.c.endpoint_id)
                .where(DELIVERIES.c.claim_token == token, DELIVERIES.c.status == PENDING)
                .order_by(DELIVERIES.c.next_attempt_at)).all()
        return [Due(row.id, row.event_id, row.event_type, row.object_id, row.event_created_at, row.data, row.attempts,
                    row.url, ()) if row.url is not None else
                Due(row.id, row.event_id, row.event_type, row.object_id, row.event_created_at, row.data, row.attempts,
                    row.endpoint_url, signing_secrets(row._mapping, now))
                for row in rows if row.url is not None or row.endpoint_url is not None]

    def finish(self, delivery_id: str, token: str, delivered: bool, now: datetime, status_code: int | None,
               error: str | None) -> bool:
        """A claimed delivery sent (`delivered`) or given up; False where the claim was lost meanwhile."""
        return self._settle(delivery_id, token, status=DELIVERED if delivered else FAILED, finished_at=now,
                            attempts=DELIVERIES.c.attempts + 1, last_status_code=status_code, last_error=error)

    def retry(self, delivery_id: str, token: str, at: datetime, status_code: int | None, error: str) -> bool:
        """A claimed delivery that failed, to be tried again from `at`."""
        return self._settle(delivery_id, token, next_attempt_at=at, attempts=DELIVERIES.c.attempts + 1,
                            last_status_code=status_code, last_error=error)

    def _settle(self, delivery_id: str, token: str, **values: Any) -> bool:
        with self._engine.begin() as connection:
            changed = connection.execute(update(DELIVERIES).where(DELIVERIES.c.id == delivery_id,
                                                                  DELIVERIES.c.claim_token == token,
                                                                  DELIVERIES.c.status == PENDING)
                                         .values(claimed_until=None, claim_token=None, **values))
            return changed.rowcount > 0

    def deliveries(self, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        """The deliveries (to one endpoint), oldest first: what operators and tests look at."""
        with self._engine.connect() as connection:
            query = select(DELIVERIES).order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id)
            if endpoint_id is not None:
                query = query.where(DELIVERIES.c.endpoint_id == endpoint_id)
            return [dict(row._mapping) for row in connection.execute(query)]

    def purge(self, finished_before: datetime) -> int:
        """Forget deliveries that finished (sent, or given up) before `finished_before`; how many."""
        with self._engine.begin() as connection:
            return connection.execute(delete(DELIVERIES).where(DELIVERIES.c.finished_at < finished_before)).rowcount

