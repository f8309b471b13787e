"""Vector stores' rows on SQLite and PostgreSQL (storage/vector_stores.py): a file's chunks are written in
the transaction that completes it, and only while it is in progress; the store's version moves with its
chunks; a lapsed ingestion lease is taken over by exactly one replica; deleting cascades."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from storage.vector_stores import VectorStoreStore

DIM = 4


def _store(store: VectorStoreStore, store_id: str = "vs_1", key: str | None = "k") -> None:
    now = datetime.now(UTC)
    store.put_store({"id": store_id, "created_at": now, "api_key_id": key, "name": "kb", "metadata": {},
                     "expires_after_days": None, "last_active_at": now, "version": 0})


def _file(store: VectorStoreStore, file_id: str, lease_until: datetime | None = None, batch_id: str | None = None,
          store_id: str = "vs_1") -> bool:
    return store.put_file({"vector_store_id": store_id, "file_id": file_id, "created_at": datetime.now(UTC),
                           "status": "in_progress", "last_error": None, "attributes": {"n": len(file_id)},
                           "chunking": {"max_chunk_size_tokens": 254, "chunk_overlap_tokens": 127},
                           "usage_bytes": 0, "batch_id": batch_id,
                           "lease_until": lease_until or datetime.now(UTC) + timedelta(minutes=1)})


def _vectors(n: int, seed: int) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32))


def test_chunks_come_with_completion_and_move_the_version(db_url: str) -> None:
    store = VectorStoreStore(db_url)
    _store(store)
    assert _file(store, "file-a") and not _file(store, "file-a")  # added once
    _file(store, "file-b")
    assert store.version("vs_1") == 0 and store.chunks("vs_1", DIM).texts == []
    vectors = _vectors(3, 0)
    assert store.finish_file("vs_1", "file-a", list(zip(["a0", "a1", "a2"], vectors, strict=True)), 300)
    assert not store.finish_file("vs_1", "file-a", [("again", vectors[0])], 1)  # completed already: untouched
    chunks = store.chunks("vs_1", DIM)
    assert (chunks.version, chunks.texts, chunks.positions) == (1, ["a0", "a1", "a2"], [0, 1, 2])
    assert np.array_equal(chunks.embeddings, np.stack(vectors))
    counts = store.file_counts(["vs_1"])["vs_1"]
    assert (counts["completed"], counts["in_progress"], counts["usage_bytes"]) == (1, 1, 300)
    # A file cancelled meanwhile writes nothing; removing a file takes its chunks, and moves the version.
    assert store.update_file("vs_1", "file-b", {"status": "cancelled"}, ("in_progress",))
    assert not store.finish_file("vs_1", "file-b", [("b0", vectors[0])], 10)
    assert store.delete_file("vs_1", "file-a") and store.chunks("vs_1", DIM).texts == []
    assert store.version("vs_1") == 2 and store.get_file("vs_1", "file-a") is None


def test_a_lapsed_lease_is_taken_over_once(db_url: str) -> None:
    store, now = VectorStoreStore(db_url), datetime.now(UTC)
    _store(store)
    _file(store, "file-stuck", lease_until=now - timedelta(seconds=5))
    _file(store, "file-live")
    assert store.stale_files(now) == [("vs_1", "file-stuck")]
    later = now + timedelta(minutes=1)
    assert store.take_over_file("vs_1", "file-stuck", now, later)
    assert not store.take_over_file("vs_1", "file-stuck", now, later)  # another replica was first
    assert store.stale_files(now) == []
    assert store.renew_file("vs_1", "file-stuck", later + timedelta(minutes=1))
    store.update_file("vs_1", "file-stuck", {"status": "cancelled"})
    assert not store.renew_file("vs_1", "file-stuck", later)  # the holder learns it should stop


def test_pages_batches_and_deleting_a_store(db_url: str) -> None:
    store = VectorStoreStore(db_url)
    _store(store)
    _store(store, "vs_other", key="someone-else")
    for i in range(5):
        _file(store, f"file-{i}", batch_id="vsfb_1" if i % 2 else None)
    first, more = store.page_files("vs_1", 2, False, None)
    second, _ = store.page_files("vs_1", 2, False, first[-1]["file_id"])
    assert more and [r["file_id"] for r in first + second] == [f"file-{i}" for i in range(4)]
    assert [r["file_id"] for r in store.page_files("vs_1", 10, True, None, batch_id="vsfb_1")[0]] == ["file-3", "file-1"]
    assert store.cancel_batch("vs_1", "vsfb_1") == 2
    assert store.batch_counts("vs_1", "vsfb_1")["cancelled"] == 2
    assert [r["file_id"] for r in store.page_files("vs_1", 10, False, None, status="in_progress")[0]] == \
        ["file-0", "file-2", "file-4"]
    assert store.attributes("vs_1")["file-0"] == {"n": 6}
    assert [r["id"] for r in store.page_stores("k", 10, True, None)[0]] == ["vs_1"]
    store.finish_file("vs_1", "file-0", [("x", _vectors(1, 1)[0])], 1)
    assert store.delete_store("vs_1") and store.get_store("vs_1") is None
    assert store.page_files("vs_1", 10, False, None)[0] == [] and store.chunks("vs_1", DIM).texts == []
    assert store.get_store("vs_other") is not None


def test_a_deleted_file_leaves_every_store(db_url: str) -> None:
    store = VectorStoreStore(db_url)
    for store_id in ("vs_1", "vs_2"):
        _store(store, store_id)
        _file(store, "file-shared", store_id=store_id)
        store.finish_file(store_id, "file-shared", [("shared", _vectors(1, 2)[0])], 6)
    _file(store, "file-own", store_id="vs_2")
    assert sorted(store.delete_file_everywhere("file-shared")) == ["vs_1", "vs_2"]
    assert store.chunks("vs_1", DIM).texts == store.chunks("vs_2", DIM).texts == []
    assert store.version("vs_1") == store.version("vs_2") == 2  # completed, then emptied
    assert [r["file_id"] for r in store.page_files("vs_2", 10, False, None)[0]] == ["file-own"]
    assert store.delete_file_everywhere("file-nowhere") == []
