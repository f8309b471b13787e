"""Teams: keys that share a budget and limits (storage/models/teams.py). A key may belong to one
(`api_keys.team_id`, detached when its team is deleted); each request's row keeps its key's team
(`outcomes.team_id`), and usage is summed by team too (`usage_rollup.team_id`, '' for rows without one,
in the sums' primary key).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
ROLLUP_KEY = ["width_s", "bucket", "model", "api_key_id", "route_group", "endpoint", "batch"]


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("rpm_limit", sa.Integer(), nullable=True),
        sa.Column("tpm_limit", sa.Integer(), nullable=True),
        sa.Column("budget_usd", sa.Float(), nullable=True),
        sa.Column("spent_usd", sa.Float(), server_default="0", nullable=False),
        sa.Column("models", JSON_DOC, nullable=True),
        sa.Column("budget_period", sa.String(), nullable=True),
        sa.Column("period_start", sa.BigInteger(), nullable=True),
        sa.Column("period_spent_usd", sa.Float(), server_default="0", nullable=False),
        sa.Column("metadata", JSON_DOC, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("team_id", sa.String(), nullable=True))
        batch.create_foreign_key(op.f("fk_api_keys_team_id_teams"), "teams", ["team_id"], ["id"], ondelete="SET NULL")
        batch.create_index(op.f("ix_api_keys_team_id"), ["team_id"])
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("team_id", sa.String(), nullable=True))
    # The sums already kept are of no team (''); the primary key takes the new dimension.
    with op.batch_alter_table("usage_rollup") as batch:
        batch.add_column(sa.Column("team_id", sa.String(), server_default="", nullable=False))
        batch.drop_constraint("pk_usage_rollup", type_="primary")
        batch.create_primary_key("pk_usage_rollup", [*ROLLUP_KEY[:4], "team_id", *ROLLUP_KEY[4:]])


def downgrade() -> None:
    # Sums that differ by team alone would collide under the old key: merge them first.
    sums = "requests, input_tokens, output_tokens, cached_tokens, cost_usd, baseline_cost_usd, cache_hits"
    key = ", ".join(ROLLUP_KEY)
    op.execute(f"CREATE TABLE usage_rollup_merged AS SELECT {key}, "
               + ", ".join(f"SUM({name}) AS {name}" for name in sums.split(", "))
               + f" FROM usage_rollup GROUP BY {key}")
    op.execute("DELETE FROM usage_rollup")
    with op.batch_alter_table("usage_rollup") as batch:
        batch.drop_constraint("pk_usage_rollup", type_="primary")
        batch.drop_column("team_id")
        batch.create_primary_key("pk_usage_rollup", ROLLUP_KEY)
    op.execute(f"INSERT INTO usage_rollup ({key}, {sums}) SELECT {key}, {sums} FROM usage_rollup_merged")
    op.drop_table("usage_rollup_merged")
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("team_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index(op.f("ix_api_keys_team_id"))
        batch.drop_constraint(op.f("fk_api_keys_team_id_teams"), type_="foreignkey")
        batch.drop_column("team_id")
    op.drop_table("teams")
