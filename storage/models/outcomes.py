"""Outcomes of requests: one row a request, usage summed by minute and hour, and feedback on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.models.base import Base, new_id, utc_now


class Outcome(Base):
    """One row per gateway request: what was asked, where it went, what it cost, how it ended."""

    __tablename__ = "outcomes"
    # A route group's latest requests: what its cost preference is calibrated on (storage/traffic.py).
    __table_args__ = (Index("ix_outcomes_route_group_created_at", "route_group", "created_at"),)

    request_id: Mapped[str] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    # What was asked for: "chat", "completion", "embedding", "rerank", "moderation" or "responses" (served as
    # a chat); null on rows logged before it was kept, and on requests refused before their body was read.
    # Training exports leave embeddings, reranks and moderations out.
    endpoint: Mapped[str | None]
    api_key_id: Mapped[str | None]
    team_id: Mapped[str | None]  # the key's team when the request came (storage/models/teams.py)
    # The budget periods (their starts, Unix seconds) its cost counts in for its key and its team: those it
    # was admitted in. The outcome writer adds the cost to their spend from these (storage/spend.py); null:
    # a lifetime budget's (no period).
    key_period_start: Mapped[int | None] = mapped_column(BigInteger)
    team_period_start: Mapped[int | None] = mapped_column(BigInteger)
    session_id: Mapped[str | None] = mapped_column(index=True)
    turn: Mapped[int | None]
    route_group: Mapped[str | None]
    requested_model: Mapped[str | None]
    model: Mapped[str | None] = mapped_column(index=True)
    deployment: Mapped[str | None]
    engine_instance: Mapped[str | None]
    moved_instance: Mapped[bool] = mapped_column(default=False)
    router_name: Mapped[str | None]
    router_version: Mapped[str | None]
    router_scores: Mapped[dict[str, float] | None]
    cost_preference: Mapped[float | None]
    propensity: Mapped[float | None]
    # The exploration it was routed under (routers/exploration.py): epsilon and the models it could draw.
    explore_epsilon: Mapped[float | None]
    explore_pool: Mapped[list[str] | None]
    # The router's choice, and what verifying its short answer did (routers/verify.py): `model` is what
    # served, which is the escalation model where verification escalated.
    routed_model: Mapped[str | None]
    verify_outcome: Mapped[str | None]
    # Served from the response cache (gateway/response_cache.py): no upstream call, no cost; training
    # exports leave such rows out (the same answer again, and free). Null on rows logged before it was kept.
    cache_hit: Mapped[bool | None]
    rank_score: Mapped[float | None]
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    cached_tokens: Mapped[int | None]
    ttft_s: Mapped[float | None]
    latency_s: Mapped[float | None]
    cost_usd: Mapped[float | None]
    # What it would have cost on its route group's costliest model (storage/usage.py: routing's savings).
    baseline_cost_usd: Mapped[float | None]
    batch_id: Mapped[str | None]  # the batch whose line it was (gateway/batches.py)
    finish_reason: Mapped[str | None]
    tool_calls: Mapped[list[str] | None]
    pin_ttl_s: Mapped[float | None]
    stream: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(default="ok")
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[Any | None]  # chat messages (list of dicts) or prompt text; stored only when configured
    completion: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any] | None]


class UsageRollup(Base):
    """Counted requests summed by minute and by hour (`width_s`) and by what usage is grouped by, kept in
    step with `outcomes` by its writer (storage/usage.py): usage over a month reads these, not the rows.
    Absent dimensions are '' (a primary key column cannot be NULL)."""

    __tablename__ = "usage_rollup"
    # An API key reading its own usage (the primary key serves everyone's, by width and time).
    __table_args__ = (Index("ix_usage_rollup_width_s_api_key_id_bucket", "width_s", "api_key_id", "bucket"),)

    width_s: Mapped[int] = mapped_column(primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Unix seconds of its start
    model: Mapped[str] = mapped_column(primary_key=True)
    api_key_id: Mapped[str] = mapped_column(primary_key=True)
    team_id: Mapped[str] = mapped_column(primary_key=True, server_default="")  # OpenAI's project_id here
    route_group: Mapped[str] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(primary_key=True)
    batch: Mapped[bool] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[float]
    baseline_cost_usd: Mapped[float]
    cache_hits: Mapped[int] = mapped_column(BigInteger)
    # OpenAI's audio and image usage's units: a transcription's seconds, a speech's characters, images generated.
    units: Mapped[float] = mapped_column(server_default="0")


class Feedback(Base):
    """A quality signal for one request or a whole session (e.g. thumbs up, task success, judge score)."""

    __tablename__ = "feedback"

    # Client-generated id, so a retried batch of feedback rows cannot insert duplicates.
    id: Mapped[str] = mapped_column(primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, index=True)
    request_id: Mapped[str | None] = mapped_column(index=True)
    session_id: Mapped[str | None] = mapped_column(index=True)
    # The key that sent it: a session's feedback counts for that key's requests only (sessions are
    # per key, agent_sessions/identity.py); None for the master key or when keys are not required.
    api_key_id: Mapped[str | None]
    metric: Mapped[str]
    value: Mapped[float]
    extra: Mapped[dict[str, Any] | None]
