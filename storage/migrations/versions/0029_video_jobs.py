"""Video generation jobs (`/v1/videos`): the `video_jobs` table (storage/models/videos.py).

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "video_jobs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=True),
        sa.Column("team_id", sa.String(), nullable=True),
        sa.Column("deployment", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("seconds", sa.Integer(), nullable=False),
        sa.Column("size", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("hold_usd", sa.Float(), nullable=False),
        sa.Column("hold_period", sa.Integer(), nullable=True),
        sa.Column("video", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_jobs")),
    )
    op.create_index("ix_video_jobs_api_key_id_created_at", "video_jobs", ["api_key_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_video_jobs_api_key_id_created_at", table_name="video_jobs")
    op.drop_table("video_jobs")
