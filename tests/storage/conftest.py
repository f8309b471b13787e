"""Database fixtures: a migrated SQLite file per test, and a fresh PostgreSQL database per test.

PostgreSQL comes from PITSTOP_TEST_PG_URL (default: the local server, database `test`); each test
gets its own `pitstop_test_<random>` database (a copy of one migrated per run), dropped afterwards.
Tests skip if the server is unreachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from storage.migrate import upgrade

PG_ADMIN_URL = os.environ.get("PITSTOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except sa.exc.OperationalError as error:
        return str(error).splitlines()[0]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    problem = _pg_reachable()
    if problem is not None:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({problem}); set PITSTOP_TEST_PG_URL")
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@contextmanager
def scratch_database(admin: sa.Engine, template: str = "template1") -> Iterator[str]:
    name = f"pitstop_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pg_url_for(database: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_migrated_template(pg_admin: sa.Engine) -> Iterator[str]:
    """Migrated once per run; tests get copies (CREATE DATABASE ... TEMPLATE), much faster than Alembic."""
    with scratch_database(pg_admin) as name:
        upgrade(pg_url_for(name))
        yield name


@pytest.fixture
def pg_url(pg_admin: sa.Engine) -> Iterator[str]:
    """An empty, unmigrated PostgreSQL database for this test only."""
    with scratch_database(pg_admin) as name:
        yield pg_url_for(name)


@pytest.fixture
def pg_migrated_url(pg_admin: sa.Engine, pg_migrated_template: str) -> Iterator[str]:
    with scratch_database(pg_admin, template=pg_migrated_template) as name:
        yield pg_url_for(name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'pitstop.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database URL on each backend."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database URL on each backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_migrated_url")
    url = request.getfixturevalue("sqlite_url")
    upgrade(url)
    return url
