"""Files' expiry on SQLite and PostgreSQL (storage/files.py): an expired file is neither read, nor listed,
nor its content served, from the moment it expires, and the sweep deletes it; files without an expiry
and those not yet due stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage.files import FileStore


def test_an_expired_file_is_gone_at_once_and_swept_later(db_url: str) -> None:
    store, now = FileStore(db_url), datetime.now(UTC)
    for name, expires_at in (("kept", None), ("later", now + timedelta(hours=1)), ("gone", now - timedelta(seconds=1))):
        store.put({"id": f"file-{name}", "created_at": now, "api_key_id": "k", "filename": name, "purpose": "batch",
                   "bytes": 2, "content": b"ab", "expires_at": expires_at})
    rows, more = store.page("k", 10, True, None)
    assert sorted(r["id"] for r in rows) == ["file-kept", "file-later"] and not more
    assert store.get("file-gone") is None and store.content("file-gone") is None
    assert store.content("file-later") == b"ab" and store.get("file-later")["expires_at"] > now  # type: ignore[index]
    assert store.purge(now) == 1 and store.purge(now) == 0
    assert store.purge(now + timedelta(hours=2)) == 1  # "later", once due
    assert [r["id"] for r in store.page("k", 10, True, None)[0]] == ["file-kept"]
