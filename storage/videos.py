"""Video generation jobs: put, read, page (a key's), advance a job's status once, delete.

Storage only: who may read what, and when a job is billed, is the gateway's (gateway/videos.py).
These calls do blocking I/O: run them in a thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, delete, select, text, update
from sqlalchemy.engine import URL, Engine

from storage.db import as_engine
from storage.files import key_page
from storage.models import VideoJob
from storage.rows import RowShape

TABLE: Table = VideoJob.__table__  # type: ignore[assignment]
RUNNING = ("queued", "in_progress")  # a job's statuses before it ends


class VideoStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._shape = RowShape(TABLE)

    def ping(self) -> None:
        """Raises where the database does not answer."""
        with self._engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def put(self, row: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            connection.execute(TABLE.insert(), [self._shape.complete(row)])

    def get(self, video_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as connection:
            row = connection.execute(select(TABLE).where(TABLE.c.id == video_id)).first()
            return None if row is None else dict(row._mapping)

    def advance(self, video_id: str, video: dict[str, Any], only_from: Sequence[str] = RUNNING) -> bool:
        """The job's newest object (its status the Video's), while its status is one of `only_from`: True for
        the one call that moved it, so a job's end is billed once however many replicas saw it."""
        with self._engine.begin() as connection:
            return connection.execute(update(TABLE).where(TABLE.c.id == video_id, TABLE.c.status.in_(only_from))
                                      .values(video=video, status=video["status"])).rowcount > 0

    def delete(self, video_id: str) -> bool:
        with self._engine.begin() as connection:
            return connection.execute(delete(TABLE).where(TABLE.c.id == video_id)).rowcount > 0

    def page(self, key_id: str | None, limit: int, descending: bool,
             after: str | None) -> tuple[list[dict[str, Any]], bool]:
        return key_page(self._engine, TABLE, tuple(TABLE.columns), key_id, limit, descending, after)
