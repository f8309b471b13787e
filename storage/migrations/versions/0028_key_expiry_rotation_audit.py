"""Keys that expire and rotate, and the admin audit log: `api_keys.expires_at` (Unix seconds, null: never),
`api_keys.previous_key_hash` and `previous_valid_until` (a rotated-away secret's hash, accepted until its
grace ends), and the `audit_logs` table (storage/models/audit.py). Keys already kept never expire.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the model type: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("previous_key_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("previous_valid_until", sa.BigInteger(), nullable=True))
        batch.create_index("ix_api_keys_previous_key_hash", ["previous_key_hash"])
    op.create_table(
        "audit_logs",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("effective_at", sa.BigInteger(), nullable=False),
        sa.Column("actor", JSON_DOC, nullable=False),
        sa.Column("resource_id", sa.String(), nullable=True),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_logs"),
    )
    op.create_index("ix_audit_logs_type", "audit_logs", ["type"])
    op.create_index("ix_audit_logs_effective_at", "audit_logs", ["effective_at"])
    op.create_index("ix_audit_logs_resource_id", "audit_logs", ["resource_id"])


def downgrade() -> None:
    op.drop_table("audit_logs")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_previous_key_hash")
        batch.drop_column("previous_valid_until")
        batch.drop_column("previous_key_hash")
        batch.drop_column("expires_at")
