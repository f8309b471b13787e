"""Vector stores, their files and their chunks (`/v1/vector_stores`, the Responses `file_search` tool):
gateway/vector_stores.py.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)  # frozen copies of the models' types
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "vector_stores",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=True),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("metadata", JSON_DOC, nullable=False),
        sa.Column("expires_after_days", sa.Integer(), nullable=True),
        sa.Column("last_active_at", TIMESTAMP, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vector_stores")),
    )
    op.create_index("ix_vector_stores_api_key_id_created_at", "vector_stores", ["api_key_id", "created_at"])
    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.String(), nullable=False),
        sa.Column("file_id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("last_error", JSON_DOC, nullable=True),
        sa.Column("attributes", JSON_DOC, nullable=False),
        sa.Column("chunking", JSON_DOC, nullable=False),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.String(), nullable=True),
        sa.Column("lease_until", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("vector_store_id", "file_id", name=op.f("pk_vector_store_files")),
    )
    op.create_index(op.f("ix_vector_store_files_status"), "vector_store_files", ["status"])
    op.create_table(
        "vector_store_chunks",
        sa.Column("vector_store_id", sa.String(), nullable=False),
        sa.Column("file_id", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("vector_store_id", "file_id", "position", name=op.f("pk_vector_store_chunks")),
    )


def downgrade() -> None:
    op.drop_table("vector_store_chunks")
    op.drop_index(op.f("ix_vector_store_files_status"), table_name="vector_store_files")
    op.drop_table("vector_store_files")
    op.drop_index("ix_vector_stores_api_key_id_created_at", table_name="vector_stores")
    op.drop_table("vector_stores")
