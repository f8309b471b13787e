"""Background responses (`background: true`): a stored response's status while it runs, and the lease
the replica running it renews, so any replica can tell a run that is going on from one whose replica
stopped.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the model type: a migration must not change when storage.models does.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("status", sa.String(), nullable=True))
        batch.add_column(sa.Column("lease_until", TIMESTAMP, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("status")
