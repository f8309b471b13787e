"""A key's budget may be over a UTC day, week or month (gateway/limits/periods.py): the period, and what
was spent in the current one beside the lifetime total.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("budget_period", sa.String(), nullable=True))
        batch.add_column(sa.Column("period_start", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("period_spent_usd", sa.Float(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("period_spent_usd")
        batch.drop_column("period_start")
        batch.drop_column("budget_period")
