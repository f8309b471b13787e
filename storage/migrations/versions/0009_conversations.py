"""The Conversations API: conversations and their items, so a Responses request may name a
`conversation` whose items it continues and adds to.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=True),
        sa.Column("metadata", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    op.create_table(
        "conversation_items",
        sa.Column("conversation_id", sa.String(), nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("item", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("conversation_id", "id", name=op.f("pk_conversation_items")),
    )
    op.create_index("ix_conversation_items_conversation_id_seq", "conversation_items", ["conversation_id", "seq"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_conversation_items_conversation_id_seq", table_name="conversation_items")
    op.drop_table("conversation_items")
    op.drop_table("conversations")
