"""A lease on a conversation while a Responses turn runs in it, so a second turn sent meanwhile is a 400
`conversation_locked` (as at OpenAI) on every replica that shares the database.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the model type: a migration must not change when storage.models does.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("lock_token", sa.String(), nullable=True))
        batch.add_column(sa.Column("locked_until", TIMESTAMP, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("locked_until")
        batch.drop_column("lock_token")
