"""Outcomes record the model the router chose and what verifying its answer did: a route group with
`verify:` (routers/verify.py) may serve another model than the one it routed to, and off-policy
evaluation and retraining must tell the router's pick from the escalation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("routed_model", sa.String(), nullable=True))
        batch.add_column(sa.Column("verify_outcome", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("verify_outcome")
        batch.drop_column("routed_model")
