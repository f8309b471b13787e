"""API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, new_id, utc_now


class ApiKey(Base):
    """A gateway API key; only the sha256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str]
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]  # tokens (prompt + completion) a minute
    budget_usd: Mapped[float | None]
    spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")
    # What the key may ask for (null: anything): model names and route groups it may send as `model`,
    # and its priority, both the default and the most urgent its requests may ask (lower goes first).
    models: Mapped[list[str] | None]
    priority: Mapped[float | None]
    # The MCP servers (of the config's `mcp_servers:`) it may reach at /mcp (null: all of them).
    mcp_servers: Mapped[list[str] | None]
    # A budget over a UTC "day", "week" or "month" (null: over the key's life), and what was spent in the
    # period that started at `period_start` (Unix seconds), the last one the key spent in.
    budget_period: Mapped[str | None]
    period_start: Mapped[int | None] = mapped_column(BigInteger)
    period_spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")
    # The team whose limits bound the key's requests beside its own (storage/models/teams.py); null: none.
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"), index=True)
    # When the key stops working (Unix seconds; null: never), checked at each request (gateway/auth.py).
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # The secret a rotation replaced, still accepted until `previous_valid_until` (its grace); only its hash.
    previous_key_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_valid_until: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def active(self) -> bool:
        return self.revoked_at is None
