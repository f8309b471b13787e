"""Outcomes say whether the response cache served them (gateway/response_cache.py): such a row had no
upstream call and cost nothing, and training exports leave it out.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("cache_hit", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("cache_hit")
