"""A file's expiry (`expires_after` on upload, a batch's `output_expires_after`): gateway/files.py.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)  # a frozen copy of the model's type


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("expires_at", TIMESTAMP, nullable=True))
        batch.create_index("ix_files_expires_at", ["expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_index("ix_files_expires_at")
        batch.drop_column("expires_at")
