"""A vector store's embedder (`vector_stores.embedding_model` when it was made): gateway/vector_stores.py.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vector_stores") as batch:
        batch.add_column(sa.Column("embedding_model", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vector_stores") as batch:
        batch.drop_column("embedding_model")
