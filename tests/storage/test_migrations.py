"""Packaged Alembic migrations run on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from storage.db import create_engine, database_url, session_factory
from storage.migrate import MIGRATIONS_DIR, alembic_config, current_revision, head_revision, upgrade
from storage.models import Outcome


def test_upgrade_creates_tables_and_indexes(empty_url: str) -> None:
    assert current_revision(empty_url) is None
    upgrade(empty_url)
    upgrade(empty_url)  # idempotent: already at head
    assert current_revision(empty_url) == head_revision() == "0030"

    engine = create_engine(empty_url)
    inspector = sa.inspect(engine)
    assert {"outcomes", "feedback", "api_keys", "responses", "conversations", "conversation_items",
            "alembic_version"} <= set(inspector.get_table_names())
    outcome_indexes = {index["name"] for index in inspector.get_indexes("outcomes")}
    assert {"ix_outcomes_created_at", "ix_outcomes_session_id", "ix_outcomes_model",
            "ix_outcomes_route_group_created_at"} <= outcome_indexes
    assert {index["name"] for index in inspector.get_indexes("responses")} == {"ix_responses_expires_at",
                                                                           "ix_responses_lease_until"}
    assert {index["name"] for index in inspector.get_indexes("conversation_items")} == {
        "ix_conversation_items_conversation_id_seq"}
    engine.dispose()
    command.check(alembic_config(empty_url))  # raises if the models drifted from the migrations


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))
    assert list((MIGRATIONS_DIR / "versions").glob("0002_*.py"))
    assert list((MIGRATIONS_DIR / "versions").glob("0003_*.py"))
    assert list((MIGRATIONS_DIR / "versions").glob("0004_*.py"))
    assert list((MIGRATIONS_DIR / "versions").glob("0005_*.py"))


def test_json_and_aware_timestamps_round_trip(db_url: str) -> None:
    engine = create_engine(db_url)
    created = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=timezone(timedelta(hours=2)))
    with session_factory(engine).begin() as session:
        session.add(
            Outcome(
                request_id="r1",
                created_at=created,
                router_scores={"small": 0.2, "large": 0.9},
                tool_calls=["search", "python"],
                prompt=[{"role": "user", "content": "hi"}],
            )
        )
    with session_factory(engine)() as session:
        row = session.get(Outcome, "r1")
        assert row is not None
        assert row.created_at == created and row.created_at.tzinfo is not None
        assert row.created_at.utcoffset() == timedelta(0)
        assert row.router_scores == {"small": 0.2, "large": 0.9}
        assert row.tool_calls == ["search", "python"]
        assert row.prompt == [{"role": "user", "content": "hi"}]
        assert row.extra is None and row.stream is False and row.status == "ok"
    with engine.connect() as connection:  # None is SQL NULL, not JSON 'null'
        assert connection.scalar(sa.select(sa.func.count()).where(Outcome.extra.is_(None))) == 1
    engine.dispose()
    assert created.astimezone(UTC).hour == 1


def test_a_plain_postgresql_url_runs_on_psycopg_3(pg_admin: sa.Engine) -> None:
    """`postgresql://` names no driver, and SQLAlchemy's default (psycopg2) is not installed."""
    from tests.storage.conftest import PG_ADMIN_URL  # noqa: PLC0415

    plain = sa.make_url(PG_ADMIN_URL).set(drivername="postgresql")
    engine = create_engine(plain)
    assert engine.dialect.driver == "psycopg"
    with engine.connect() as connection:
        assert connection.execute(sa.text("select 1")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize(("url", "problem"), [("mysql://u@h/db", "unsupported database 'mysql'"),
                                               ("not a url", "not a database URL")])
def test_an_unsupported_database_url_is_refused_by_name(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        database_url(url)
