"""Initial schema: outcomes, feedback, api_keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("rpm_limit", sa.Integer(), nullable=True),
        sa.Column("budget_usd", sa.Float(), nullable=True),
        sa.Column("spent_usd", sa.Float(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_prefix"), "api_keys", ["prefix"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("extra", JSON_DOC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_created_at"), "feedback", ["created_at"])
    op.create_index(op.f("ix_feedback_request_id"), "feedback", ["request_id"])
    op.create_index(op.f("ix_feedback_session_id"), "feedback", ["session_id"])

    op.create_table(
        "outcomes",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=True),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("turn", sa.Integer(), nullable=True),
        sa.Column("route_group", sa.String(), nullable=True),
        sa.Column("requested_model", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("deployment", sa.String(), nullable=True),
        sa.Column("engine_instance", sa.String(), nullable=True),
        sa.Column("moved_instance", sa.Boolean(), nullable=False),
        sa.Column("router_name", sa.String(), nullable=True),
        sa.Column("router_version", sa.String(), nullable=True),
        sa.Column("router_scores", JSON_DOC, nullable=True),
        sa.Column("cost_preference", sa.Float(), nullable=True),
        sa.Column("propensity", sa.Float(), nullable=True),
        sa.Column("rank_score", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cached_tokens", sa.Integer(), nullable=True),
        sa.Column("ttft_s", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("finish_reason", sa.String(), nullable=True),
        sa.Column("tool_calls", JSON_DOC, nullable=True),
        sa.Column("pin_ttl_s", sa.Float(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prompt", JSON_DOC, nullable=True),
        sa.Column("completion", sa.Text(), nullable=True),
        sa.Column("extra", JSON_DOC, nullable=True),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_outcomes")),
    )
    op.create_index(op.f("ix_outcomes_created_at"), "outcomes", ["created_at"])
    op.create_index(op.f("ix_outcomes_model"), "outcomes", ["model"])
    op.create_index(op.f("ix_outcomes_session_id"), "outcomes", ["session_id"])


def downgrade() -> None:
    op.drop_table("outcomes")
    op.drop_table("feedback")
    op.drop_table("api_keys")
