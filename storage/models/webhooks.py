"""Webhook endpoints and the deliveries waiting for them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, utc_now


class WebhookEndpoint(Base):
    """Where events are POSTed (`/v1/webhook_endpoints`, gateway/webhook_endpoints.py), signed with its
    secret; after a rotation that keeps the old secret, with that one too until `previous_secret_until`.
    The secrets are kept as they are: signing needs them."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(primary_key=True)  # we_...
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now)
    name: Mapped[str]
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]]
    secret: Mapped[str]
    previous_secret: Mapped[str | None]
    previous_secret_until: Mapped[datetime | None]


class WebhookDelivery(Base):
    """One event on its way to one endpoint (an outbox row): written in the transaction of the change the
    event tells of, so an event is never lost nor told of a change that did not happen. Any replica sends
    it, holding it (`claimed_until`) while it does; one that fails is tried again from `next_attempt_at`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(primary_key=True)  # wh_...: the `webhook-id` header, the same on retries
    endpoint_id: Mapped[str | None] = mapped_column(index=True)  # a /v1/webhook_endpoints one, signed; or
    url: Mapped[str | None] = mapped_column(Text)  # a URL of the config's (`alerts.webhook_url`): `data` as is
    event_id: Mapped[str]  # evt_...: the event's, the same for every endpoint it goes to
    event_type: Mapped[str]
    object_id: Mapped[str]  # what the event is about (resp_..., batch_...)
    event_created_at: Mapped[int] = mapped_column(BigInteger)  # Unix seconds of the change
    data: Mapped[Any | None]  # the event's `data` where it is more than `{"id": object_id}`
    status: Mapped[str]  # pending, delivered, failed (given up)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    claim_token: Mapped[str | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)  # delivered or given up
