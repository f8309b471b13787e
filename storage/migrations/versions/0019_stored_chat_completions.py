"""Stored chat completions (`store: true` on /v1/chat/completions, gateway/stored_completions.py).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chat_completions",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=True),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("request_model", sa.String(), nullable=False),
        sa.Column("metadata", JSON_DOC, nullable=False),
        sa.Column("messages", JSON_DOC, nullable=False),
        sa.Column("settings", JSON_DOC, nullable=False),
        sa.Column("completion", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_completions")),
    )
    op.create_index("ix_chat_completions_api_key_id_created_at", "chat_completions", ["api_key_id", "created_at"],
                    unique=False)
    op.create_index(op.f("ix_chat_completions_expires_at"), "chat_completions", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_chat_completions_expires_at"), table_name="chat_completions")
    op.drop_index("ix_chat_completions_api_key_id_created_at", table_name="chat_completions")
    op.drop_table("chat_completions")
