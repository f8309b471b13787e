"""Stored Responses API answers, so clients may continue a conversation with `previous_response_id`
and read or delete a response by id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=True),
        sa.Column("previous_response_id", sa.String(), nullable=True),
        sa.Column("ancestors", JSON_DOC, nullable=False),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("input_items", JSON_DOC, nullable=False),
        sa.Column("response", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_responses")),
    )
    op.create_index(op.f("ix_responses_expires_at"), "responses", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_responses_expires_at"), table_name="responses")
    op.drop_table("responses")
