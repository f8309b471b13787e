"""Keys' and teams' MCP servers (`api_keys.mcp_servers`, `teams.mcp_servers`): the servers of the config's
`mcp_servers:` they may reach at the gateway's /mcp (gateway/mcp_gateway.py). Null for those already kept:
all of them, as before.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0030"
down_revision: str | None = "0029"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the model type: a migration must not change when storage.models does.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("mcp_servers", JSON_DOC, nullable=True))
    op.add_column("teams", sa.Column("mcp_servers", JSON_DOC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("mcp_servers")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("mcp_servers")
