"""Video jobs on SQLite and PostgreSQL (storage/videos.py): a job's row read back as kept, its status moved
once from a running one (the call that moves it to an end is the one that bills it), a key's jobs paged by
(created_at, id) either way, and a delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage.videos import VideoStore


def _row(video_id: str, key: str, at: datetime, status: str = "queued") -> dict:
    return {"id": video_id, "created_at": at, "api_key_id": key, "team_id": None, "deployment": "sora#0",
            "model": "sora", "seconds": 8, "size": "1280x720", "status": status, "request_id": f"req-{video_id}",
            "hold_usd": 0.8, "hold_period": None, "video": {"id": video_id, "status": status}}


def test_a_job_is_kept_moved_once_paged_and_deleted(db_url: str) -> None:
    store, now = VideoStore(db_url), datetime.now(UTC)
    store.ping()
    for i in range(3):
        store.put(_row(f"video_{i}", "k", now + timedelta(seconds=i)))
    store.put(_row("video_other", "other", now))
    row = store.get("video_1")
    assert row is not None and (row["deployment"], row["seconds"], row["hold_usd"]) == ("sora#0", 8, 0.8)
    assert row["video"] == {"id": "video_1", "status": "queued"}
    assert store.advance("video_1", {"id": "video_1", "status": "in_progress"})
    assert store.advance("video_1", {"id": "video_1", "status": "completed", "progress": 100})
    assert not store.advance("video_1", {"id": "video_1", "status": "completed"})  # ended: billed once
    assert store.get("video_1")["video"]["progress"] == 100  # type: ignore[index]
    newest, more = store.page("k", 2, True, None)
    assert [r["id"] for r in newest] == ["video_2", "video_1"] and more
    rest, more = store.page("k", 2, True, "video_1")
    assert [r["id"] for r in rest] == ["video_0"] and not more
    assert [r["id"] for r in store.page("k", 10, False, None)[0]] == ["video_0", "video_1", "video_2"]
    assert store.delete("video_0") and not store.delete("video_0") and store.get("video_0") is None
    assert [r["id"] for r in store.page("other", 10, True, None)[0]] == ["video_other"]


def test_migration_0029_adds_and_drops_the_job_table(db_url: str) -> None:
    import sqlalchemy as sa
    from alembic import command

    from storage.db import create_engine
    from storage.migrate import alembic_config, current_revision, upgrade

    engine = create_engine(db_url)
    command.downgrade(alembic_config(engine.url.render_as_string(hide_password=False)), "0028")
    assert "video_jobs" not in sa.inspect(engine).get_table_names()
    upgrade(engine)
    assert current_revision(engine) >= "0029" and "video_jobs" in sa.inspect(engine).get_table_names()
    engine.dispose()
