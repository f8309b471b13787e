"""Engine creation: an embedded SQLite file by default, PostgreSQL (psycopg 3) when a URL says so."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

DEFAULT_URL = "sqlite:///var/pitstop.db"
SQLITE_BUSY_TIMEOUT_MS = 5_000
PG_CONNECT_TIMEOUT_S = 5  # a dead database must fail fast so the outcome writer can back off and retry


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def ensure_sqlite_dir(url: str | URL) -> None:
    """Create the parent directory of a SQLite database file; no-op for other backends."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite" and not is_sqlite_memory(url):
        assert url.database is not None
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _set_sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    # WAL lets readers (exports, key lookups) run while the writer thread commits batches.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def database_url(url: str | URL) -> URL:
    """`url` parsed, with PostgreSQL on psycopg 3 (the driver installed) where it names none:
    `postgresql://...` would otherwise ask SQLAlchemy for psycopg2. ValueError for a URL that is not
    one, or names a database other than SQLite or PostgreSQL."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:///PATH or "
                         "postgresql+psycopg://USER@HOST/DB")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def read_json(text: str | bytes) -> Any:
    """How JSON columns are read: orjson, about 4x the standard library's speed on the rows a long
    conversation, a response chain or an export reads; what orjson refuses (NaN, a lone surrogate
    escape) the standard library reads as it wrote it. orjson reads an integer past 64 bits as a float:
    none is stored (a request with one is a 400, and upstream answers are read with orjson already)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def create_engine(url: str | URL = DEFAULT_URL, **kwargs: Any) -> Engine:
    """An Engine for `url` with Pitstop's defaults; extra kwargs go to `sqlalchemy.create_engine`."""
    url = database_url(url)
    kwargs.setdefault("json_deserializer", read_json)
    backend = url.get_backend_name()
    if backend == "sqlite":
        ensure_sqlite_dir(url)
        if is_sqlite_memory(url):
            # One shared connection, or the writer thread would see its own empty database.
            kwargs.setdefault("poolclass", StaticPool)
            kwargs.setdefault("connect_args", {"check_same_thread": False})
        engine = sa.create_engine(url, **kwargs)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    if backend == "postgresql":
        connect_args = kwargs.setdefault("connect_args", {})
        connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
    kwargs.setdefault("pool_pre_ping", True)  # drop connections that died with a database restart
    return sa.create_engine(url, **kwargs)


def as_engine(url_or_engine: str | URL | Engine) -> Engine:
    return url_or_engine if isinstance(url_or_engine, Engine) else create_engine(url_or_engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after commit: callers get plain detached rows, not lazy proxies.
    return sessionmaker(engine, expire_on_commit=False)
