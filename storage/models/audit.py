"""The audit log: one row per admin change (a key created, changed, rotated or revoked, a team's change, a
config reload), as OpenAI's Admin API audit logs show them (gateway/audit_endpoints.py). Never a secret."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base

ID_PREFIX = "audit_log-"


class AuditLog(Base):
    """`seq` orders the log (an autoincrement, so newer is larger on every backend); the public id is
    `audit_log-<seq>`. `payload` is the event's object, shown under a key named as its `type`."""

    __tablename__ = "audit_logs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(index=True)  # "api_key.created", "team.updated", ...
    effective_at: Mapped[int] = mapped_column(BigInteger, index=True)  # Unix seconds
    actor: Mapped[dict[str, Any]]  # OpenAI's actor object: who did it, from where
    resource_id: Mapped[str | None] = mapped_column(index=True)  # the key's or team's id
    payload: Mapped[dict[str, Any]]

    @property
    def public_id(self) -> str:
        return f"{ID_PREFIX}{self.seq}"
