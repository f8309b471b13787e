"""A route group's recent traffic, read back from the outcome log on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from storage.db import create_engine, session_factory
from storage.migrate import upgrade
from storage.models import Outcome
from storage.rows import RowShape
from storage.traffic import LoggedRequest, recent_requests
from tests.storage.helpers import outcome_row

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _seed(url: str) -> None:
    rows = []
    for i in range(12):
        # auto's requests 0, 2, 4, ...: stored in reverse time order, so the query has to sort
        group = "auto" if i % 2 == 0 else "other"
        rows.append(outcome_row(i, route_group=group, created_at=T0 + timedelta(seconds=100 - i)))
    rows[2]["prompt"] = None  # store_text was off for it
    rows[4]["status"] = "error"  # not served: not traffic
    rows[8]["router_name"] = None  # a session's later turn, kept on its model: not the router's choice
    rows[6]["prompt"] = [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "parts"}]}]
    with session_factory(engine := create_engine(url)).begin() as session:
        session.add_all(Outcome(**row) for row in rows)
    engine.dispose()


def recent_prompts(engine: sa.Engine, group: str, limit: int) -> list[str]:
    return [r.prompt for r in recent_requests(engine, group, limit)]


def test_recent_requests_are_the_groups_latest_served_requests_oldest_first(db_url: str) -> None:
    _seed(db_url)
    engine = create_engine(db_url)
    try:
        # auto, oldest first: 10, 8 (sticky), 6, 4 (failed), 2 (no text), 0
        assert recent_prompts(engine, "auto", 10) == ["question 10", "parts", "question 0"]
        assert recent_prompts(engine, "auto", 2) == ["parts", "question 0"]  # the window: the latest rows
        assert recent_prompts(engine, "nobody", 10) == []
        # with the model that served each and what it really cost (outcome_row: large / small, 0.001 x i % 3)
        assert recent_requests(engine, "auto", 1) == [LoggedRequest("question 0", "large", 0.0)]
        assert recent_requests(engine, "auto", 10)[0] == LoggedRequest("question 10", "large", 0.001)
    finally:
        engine.dispose()


def test_the_index_that_serves_the_query_comes_with_an_upgrade_from_the_first_schema(empty_url: str) -> None:
    from alembic import command  # noqa: PLC0415

    from storage.migrate import alembic_config  # noqa: PLC0415

    command.upgrade(alembic_config(empty_url), "0001")
    engine = create_engine(empty_url)
    first = sa.Table("outcomes", sa.MetaData(), autoload_with=engine)  # the table as 0001 made it
    row = RowShape(Outcome.__table__).complete(outcome_row(1, route_group="auto"))
    with engine.begin() as connection:
        connection.execute(first.insert().values({c.key: row[c.key] for c in first.columns}))
    upgrade(empty_url)
    inspector = sa.inspect(engine)
    indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("outcomes")}
    assert indexes["ix_outcomes_route_group_created_at"] == ["route_group", "created_at"]
    assert {"explore_epsilon", "explore_pool"} <= {c["name"] for c in inspector.get_columns("outcomes")}
    assert recent_prompts(engine, "auto", 5) == ["question 1"]  # the row from before the upgrade
    with session_factory(engine)() as session:
        kept = session.get(Outcome, "req-000001")
        assert kept is not None and kept.explore_pool is None and kept.router_scores == {"small": 0.3, "large": 0.8}
    engine.dispose()


@pytest.mark.parametrize("limit", [1, 3])
def test_a_dead_database_raises_instead_of_returning_nothing(limit: int) -> None:
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(sa.exc.OperationalError):
        recent_requests(engine, "auto", limit)
