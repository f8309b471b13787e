"""The conversations tables on SQLite and PostgreSQL: create with items, items in `seq` order whatever
order they were written in, idempotent adds (a writer's retry), metadata, item and whole deletion, and
the lease a turn holds on its conversation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from storage.conversations import ConversationItemWriter, ConversationStore

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def conversation(conversation_id: str, **fields: object) -> dict:
    return {"id": conversation_id, "created_at": NOW, "api_key_id": "key-1", "metadata": {"topic": "démo"}, **fields}


def item(conversation_id: str, item_id: str, seq: int, text: str = "hi") -> dict:
    return {"conversation_id": conversation_id, "id": item_id, "seq": seq, "created_at": NOW,
            "item": {"type": "message", "id": item_id, "role": "user", "content": text}}


def test_items_come_back_in_seq_order_and_an_add_retried_lands_once(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [item("conv_a", "msg_1", 10), item("conv_a", "msg_2", 11, "\U0001f600")])
    store.create(conversation("conv_b"), [])
    big = 1_764_936_000_000_000 * 1000 + 999  # microseconds in 2025 x 1000: past 32 bits, within 64
    store.add([item("conv_a", "msg_4", big), item("conv_a", "msg_3", 12)])  # written out of order
    store.add([item("conv_a", "msg_3", 12, "again")])  # the writer retrying after an ambiguous failure
    found, rows = store.with_items("conv_a")
    assert found is not None and found["metadata"] == {"topic": "démo"} and found["created_at"] == NOW
    assert [r["id"] for r in rows] == ["msg_1", "msg_2", "msg_3", "msg_4"]
    assert rows[1]["item"]["content"] == "\U0001f600" and rows[2]["item"]["content"] == "hi"
    assert rows[3]["seq"] == big
    assert store.with_items("conv_b") == (store.get("conv_b"), [])
    assert store.with_items("conv_missing") == (None, [])


def test_metadata_item_and_conversation_deletion(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [item("conv_a", "msg_1", 1), item("conv_a", "msg_2", 2)])
    store.create(conversation("conv_b"), [item("conv_b", "msg_1", 1)])  # item ids are per conversation
    assert store.set_metadata("conv_a", {"k": "v"}) and not store.set_metadata("conv_missing", {})
    assert store.get("conv_a")["metadata"] == {"k": "v"}  # type: ignore[index]
    assert store.delete_item("conv_a", "msg_1") and not store.delete_item("conv_a", "msg_1")
    assert [r["id"] for r in store.with_items("conv_a")[1]] == ["msg_2"]
    assert store.delete("conv_a") and not store.delete("conv_a")
    assert store.with_items("conv_a") == (None, [])
    assert [r["id"] for r in store.with_items("conv_b")[1]] == ["msg_1"]


def test_a_conversation_id_is_created_once(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [])
    with pytest.raises(IntegrityError):
        store.create(conversation("conv_a", api_key_id="someone-else"), [item("conv_a", "msg_1", 1)])
    assert store.get("conv_a")["api_key_id"] == "key-1"  # type: ignore[index]
    assert store.with_items("conv_a")[1] == []  # the failed create's items went with it


def test_the_item_writer_writes_what_it_is_given(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [item("conv_a", "msg_1", 1)])
    with ConversationItemWriter(db_url, flush_interval_s=0.01) as writer:
        for row in store.complete_items([item("conv_a", "msg_2", 2), item("conv_a", "msg_1", 1, "dup")]):
            writer.submit(row)
    rows = store.with_items("conv_a")[1]
    assert [(r["id"], r["item"]["content"]) for r in rows] == [("msg_1", "hi"), ("msg_2", "hi")]


def test_items_are_paged_by_keyset_both_ways(db_url: str) -> None:
    store = ConversationStore(db_url)
    same_seq = [item("conv_a", f"msg_{c}", 7) for c in "ba"]  # a tie on seq: the id orders them
    store.create(conversation("conv_a"), [item("conv_a", f"msg_{n}", n) for n in range(5)] + same_seq)
    order = ["msg_0", "msg_1", "msg_2", "msg_3", "msg_4", "msg_a", "msg_b"]

    def walk(descending: bool, limit: int) -> list[list[str]]:
        pages, after = [], None
        while True:
            page = store.page("conv_a", limit, descending, after)
            pages.append([row["id"] for row in page.rows])
            if not page.has_more:
                return pages
            after = page.rows[-1]["id"]

    assert walk(False, 3) == [order[:3], order[3:6], order[6:]]
    assert walk(True, 2) == [order[::-1][:2], order[::-1][2:4], order[::-1][4:6], order[::-1][6:]]
    assert walk(False, 7) == [order] and store.page("conv_a", 7, False).has_more is False
    assert store.page("conv_a", 5, False, "msg_nope").after_found is False
    assert store.page("conv_missing", 5, False).conversation is None
    found, row = store.item("conv_a", "msg_a")
    assert found is not None and row is not None and row["item"]["id"] == "msg_a"
    assert store.item("conv_a", "msg_nope")[1] is None and store.item("conv_missing", "msg_a") == (None, None)


def test_a_lease_is_held_by_one_token_renewed_by_it_and_free_once_given_back_or_run_out(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [])
    store.create(conversation("conv_open", api_key_id=None), [])  # a gateway without keys
    at = [NOW + timedelta(seconds=s) for s in range(40)]
    assert store.lock("conv_a", "key-1", "t1", at[0], at[15])
    assert not store.lock("conv_a", "key-1", "t2", at[5], at[20])  # held
    assert store.lock("conv_a", "key-1", "t1", at[5], at[20])  # renewed by its holder
    assert not store.lock("conv_a", "key-1", "t2", at[19], at[34])
    assert not store.lock("conv_a", "key-2", "t3", at[25], at[30])  # run out, but not key-2's conversation
    assert not store.lock("conv_a", None, "t3", at[25], at[30])
    assert store.lock("conv_a", "key-1", "t2", at[20], at[35])  # run out: taken
    store.unlock("conv_a", "t1")  # too late: t2 holds it now, and keeps it
    assert not store.lock("conv_a", "key-1", "t3", at[21], at[36])
    store.unlock("conv_a", "t2")
    assert store.get("conv_a")["locked_until"] is None  # type: ignore[index]
    assert store.lock("conv_a", "key-1", "t3", at[21], at[36])
    assert store.get("conv_a")["locked_until"] == at[36]  # type: ignore[index]
    assert store.lock("conv_open", None, "t1", at[0], at[15]) and not store.lock("conv_open", "key-1", "t2", at[20], at[30])
    assert not store.lock("conv_missing", "key-1", "t1", at[0], at[15])


def test_a_lease_is_taken_with_the_items_read_and_given_back_with_the_items_written(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [item("conv_a", "msg_1", 1)])
    at = [NOW + timedelta(seconds=s) for s in range(20)]
    taken, found, rows = store.lock_and_read("conv_a", "key-1", "t1", at[0], at[15])
    assert taken and found is not None and found["lock_token"] == "t1" and [r["id"] for r in rows] == ["msg_1"]
    held = store.lock_and_read("conv_a", "key-1", "t2", at[1], at[16])
    assert held == (False, store.get("conv_a"), [])  # the conversation, to tell "held" from "not yours"
    assert store.lock_and_read("conv_missing", "key-1", "t2", at[1], at[16]) == (False, None, [])
    store.add([item("conv_a", "msg_2", 2)], unlock=("conv_a", "t2"))  # not the holder: still held
    assert not store.lock("conv_a", "key-1", "t2", at[2], at[17])
    store.add([item("conv_a", "msg_3", 3)], unlock=("conv_a", "t1"))
    assert store.lock("conv_a", "key-1", "t2", at[2], at[17])
    assert [r["id"] for r in store.with_items("conv_a")[1]] == ["msg_1", "msg_2", "msg_3"]


def test_items_a_writer_wrote_after_their_conversation_was_deleted_are_purged(db_url: str) -> None:
    store = ConversationStore(db_url)
    store.create(conversation("conv_a"), [item("conv_a", "msg_1", 1)])
    store.create(conversation("conv_b"), [item("conv_b", "msg_1", 1)])
    store.delete("conv_a")
    with ConversationItemWriter(db_url, flush_interval_s=0.01) as writer:  # what it held, written late
        for row in store.complete_items([item("conv_a", "msg_2", 2)]):
            writer.submit(row)
    assert store.purge_orphans() == 1 and store.purge_orphans() == 0
    assert [r["id"] for r in store.with_items("conv_b")[1]] == ["msg_1"]
