"""Teams: keys that share a budget and limits (as LiteLLM proxy's teams, OpenAI's projects)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, new_id, utc_now


class Team(Base):
    """A team's limits bound all its keys' requests together; each key keeps its own limits too. Its spend
    is kept as a key's is (storage/keys.py): the lifetime total, and the current budget period's."""

    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]  # tokens (prompt + completion) a minute, all its keys' together
    budget_usd: Mapped[float | None]
    spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")
    # The models and route groups its keys may use (null: any); a key's own list narrows it further.
    models: Mapped[list[str] | None]
    budget_period: Mapped[str | None]  # "day", "week" or "month" (UTC); null: over the team's life
    period_start: Mapped[int | None] = mapped_column(BigInteger)
    period_spent_usd: Mapped[float] = mapped_column(default=0.0, server_default="0")
    # Its keys' requests' priority where a key sets none (lower goes first; null: none): storage/keys.py's.
    priority: Mapped[float | None]
    # The MCP servers (of the config's `mcp_servers:`) it may reach at /mcp (null: all of them).
    mcp_servers: Mapped[list[str] | None]
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata")  # `metadata` is the declarative base's
