"""Index outcomes by (route_group, created_at): a route group's latest requests, for calibration.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outcomes_route_group_created_at", "outcomes", ["route_group", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outcomes_route_group_created_at", table_name="outcomes")
