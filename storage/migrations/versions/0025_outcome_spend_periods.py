"""Each outcome row keeps the budget periods its cost counts in, its key's and its key's team's (the
periods it was admitted in, gateway/spend_settling.py): the outcome writer adds the batch's costs to the
keys' and teams' spend from the rows (storage/spend.py), in the rows' transaction. Null: a lifetime budget
(no period), or a row without a key or team.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("outcomes", sa.Column("key_period_start", sa.BigInteger(), nullable=True))
    op.add_column("outcomes", sa.Column("team_period_start", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("team_period_start")
        batch.drop_column("key_period_start")
