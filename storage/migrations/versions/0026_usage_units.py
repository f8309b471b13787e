"""The usage sums keep the units OpenAI's audio and image usage counts (`usage_rollup.units`): a transcription's
seconds, a speech's characters, the images generated (storage/usage.py, gateway/media.py). 0 for the sums
already kept, which hold no such request.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_rollup", sa.Column("units", sa.Float(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("usage_rollup") as batch:
        batch.drop_column("units")
