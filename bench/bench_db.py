"""A throwaway PostgreSQL database per system under test (`pitstop_bench_<random>`), and what got logged
into it, so the JSON can show that outcome logging really wrote rows during the run."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class BenchDatabase:
    name: str
    admin_dsn: str = DEFAULT_ADMIN_DSN

    @classmethod
    def create(cls, admin_dsn: str = DEFAULT_ADMIN_DSN) -> BenchDatabase:
        db = cls(f"pitstop_bench_{secrets.token_hex(4)}", admin_dsn)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.name)))
        return db

    @property
    def dsn(self) -> str:
        """libpq form, e.g. for litellm's DATABASE_URL."""
        base = self.admin_dsn.rsplit("/", 1)[0]
        return f"{base}/{self.name}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    def row_counts(self) -> dict[str, int]:
        """Rows per table in the public schema."""
        counts: dict[str, int] = {}
        with psycopg.connect(self.dsn) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
            for table in tables:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                counts[table] = int(row[0]) if row else 0
        return counts

    def drop(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))


def server_version(admin_dsn: str = DEFAULT_ADMIN_DSN) -> str | None:
    try:
        with psycopg.connect(admin_dsn, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else None
    except psycopg.Error:
        return None


def on_each_database(work: Path, run: Callable[[str, str], dict]) -> list[dict]:
    """`run(storage, url)` on an embedded SQLite file in `work`, then on a throwaway PostgreSQL database
    (skipped, and said so, when the server is not reachable); their reports in that order."""
    runs = [run("sqlite", f"sqlite:///{work / 'pitstop.db'}")]
    if server_version() is None:
        print("PostgreSQL is not reachable at 127.0.0.1:5432: its run is skipped", flush=True)
        return runs
    db = BenchDatabase.create()
    try:
        runs.append(run("postgresql", db.sqlalchemy_url))
        runs[-1]["rows"] = db.row_counts()
    finally:
        db.drop()
    return runs


def on_each_database_behind_a_mock(prefix: str, mock_options: Sequence[str],
                                   run: Callable[[str, str, str, Path], dict]) -> list[dict]:
    """`run(storage, url, mock_url, work)` on each database (`on_each_database`), in a fresh work folder
    named `prefix...`, with one mock upstream (bench/mock_upstream.py with `mock_options`) for both."""
    from bench.procs import mock_upstream

    work = Path(tempfile.mkdtemp(prefix=prefix))
    mock, mock_url = mock_upstream(work, *mock_options)
    mock.start()
    try:
        return on_each_database(work, lambda storage, url: run(storage, url, mock_url, work))
    finally:
        mock.stop()
