"""A batch's finished lines, written as it runs, so a replica that takes over a batch whose replica
stopped serves only the lines not yet finished.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the model type: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "batch_records",
        sa.Column("batch_id", sa.String(), nullable=False),
        sa.Column("custom_id", sa.String(), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("record", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("batch_id", "custom_id", name=op.f("pk_batch_records")),
    )


def downgrade() -> None:
    op.drop_table("batch_records")
