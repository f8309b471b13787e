"""Outcomes record the exploration a routed request was served under: its epsilon and the pool of
models it could have drawn, so off-policy evaluation knows which models the log can show.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the model type: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("explore_epsilon", sa.Float(), nullable=True))
        batch.add_column(sa.Column("explore_pool", JSON_DOC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("explore_pool")
        batch.drop_column("explore_epsilon")
