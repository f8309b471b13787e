"""Background responses taken over: the request as sent, so that another replica runs it again when
the one running it stops (its lease lapsed), how many times one did, whose lease it is (a replica whose
run was taken over writes no more), and an index for finding lapsed leases.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A frozen copy of the model type: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("lease_token", sa.String(), nullable=True))
        batch.add_column(sa.Column("request", JSON_DOC, nullable=True))
        batch.add_column(sa.Column("takeovers", sa.Integer(), server_default="0", nullable=False))
        batch.create_index(batch.f("ix_responses_lease_until"), ["lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_index(batch.f("ix_responses_lease_until"))
        batch.drop_column("takeovers")
        batch.drop_column("request")
        batch.drop_column("lease_token")
