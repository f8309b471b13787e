"""Usage by minute and by hour (storage/usage.py): the `usage_rollup` table, filled here from the outcome
rows already logged and kept in step by the outcome writer from now on; and on `outcomes`, what each
request would have cost on its route group's costliest model (`baseline_cost_usd`, routing's savings)
and the batch whose line it was (`batch_id`).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDTHS = (60, 3_600)
# Unix seconds of a row's created_at: SQLite keeps it as ISO text in UTC.
EPOCH = {"sqlite": "CAST(strftime('%s', created_at) AS INTEGER)",
         "postgresql": "CAST(FLOOR(EXTRACT(EPOCH FROM created_at)) AS BIGINT)"}


def upgrade() -> None:
    with op.batch_alter_table("outcomes") as batch:
        batch.add_column(sa.Column("baseline_cost_usd", sa.Float(), nullable=True))
        batch.add_column(sa.Column("batch_id", sa.String(), nullable=True))
    op.create_table(
        "usage_rollup",
        sa.Column("width_s", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("api_key_id", sa.String(), nullable=False),
        sa.Column("route_group", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("batch", sa.Boolean(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("baseline_cost_usd", sa.Float(), nullable=False),
        sa.Column("cache_hits", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("width_s", "bucket", "model", "api_key_id", "route_group", "endpoint", "batch",
                                name=op.f("pk_usage_rollup")),
    )
    op.create_index("ix_usage_rollup_width_s_api_key_id_bucket", "usage_rollup", ["width_s", "api_key_id", "bucket"])
    epoch = EPOCH.get(op.get_bind().dialect.name)
    if epoch is None:
        return
    # The rows logged so far, counted as the writer counts them (answered, or charged).
    for width in WIDTHS:
        op.execute(f"""
            INSERT INTO usage_rollup (width_s, bucket, model, api_key_id, route_group, endpoint, batch, requests,
                                      input_tokens, output_tokens, cached_tokens, cost_usd, baseline_cost_usd,
                                      cache_hits)
            SELECT {width}, ({epoch}) - ({epoch}) % {width}, COALESCE(model, ''), COALESCE(api_key_id, ''),
                   COALESCE(route_group, ''), COALESCE(endpoint, ''), false, COUNT(*),
                   COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                   COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(cost_usd), 0),
                   SUM(CASE WHEN cache_hit THEN 1 ELSE 0 END)
            FROM outcomes
            WHERE status = 'ok' OR cost_usd > 0
            GROUP BY 2, 3, 4, 5, 6""")


def downgrade() -> None:
    op.drop_index("ix_usage_rollup_width_s_api_key_id_bucket", "usage_rollup")
    op.drop_table("usage_rollup")
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("batch_id")
        batch.drop_column("baseline_cost_usd")
