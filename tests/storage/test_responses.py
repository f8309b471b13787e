"""The stored-responses table on SQLite and PostgreSQL: put (idempotent), read one or many, expiry,
delete and purge; a background response's lapsed lease, taken over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage.responses import TAKEN, ResponseStore

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def row(response_id: str, expires_in_s: float = 3600, **fields: object) -> dict:
    return {"id": response_id, "created_at": NOW, "expires_at": NOW + timedelta(seconds=expires_in_s),
            "api_key_id": "key-1", "ancestors": [], "session_id": None,
            "input_items": [{"type": "message", "id": "msg_1", "role": "user", "content": "héllo \U0001f600"}],
            "response": {"id": response_id, "output": [{"type": "message", "content": [{"text": "hi"}]}]},
            **fields}


def test_put_get_many_and_expiry(db_url: str) -> None:
    store = ResponseStore(db_url)
    store.put(row("resp_a"))
    store.put(row("resp_b", previous_response_id="resp_a", ancestors=["resp_a"], session_id="resp_a"))
    store.put(row("resp_old", expires_in_s=-1))
    store.put(row("resp_a", api_key_id="someone-else"))  # a second put of one id changes nothing
    a = store.get("resp_a", NOW)
    assert a is not None and a["api_key_id"] == "key-1" and a["expires_at"] == NOW + timedelta(hours=1)
    assert a["input_items"][0]["content"] == "héllo \U0001f600" and a["response"]["output"][0]["type"] == "message"
    assert a["ancestors"] == [] and a["previous_response_id"] is None
    assert set(store.many(["resp_a", "resp_b", "resp_old", "resp_missing"], NOW)) == {"resp_a", "resp_b"}
    assert store.get("resp_b", NOW)["ancestors"] == ["resp_a"]  # type: ignore[index]
    assert store.get("resp_old", NOW) is None  # expired: as if gone, until purged
    assert store.many([], NOW) == {}


def test_delete_and_purge(db_url: str) -> None:
    store = ResponseStore(db_url)
    for name, expires_in_s in (("resp_keep", 60), ("resp_gone", -60), ("resp_also_gone", 0)):
        store.put(row(name, expires_in_s))
    assert store.purge(NOW) == 2
    assert store.many(["resp_keep", "resp_gone", "resp_also_gone"], NOW - timedelta(hours=1)).keys() == {"resp_keep"}
    assert store.delete("resp_keep") and not store.delete("resp_keep")
    assert store.get("resp_keep", NOW) is None


def test_a_row_missing_a_required_field_is_refused_before_the_database(db_url: str) -> None:
    store = ResponseStore(db_url)
    incomplete = row("resp_x")
    del incomplete["expires_at"]
    with pytest.raises(ValueError, match="expires_at"):
        store.put(incomplete)


def test_a_lapsed_background_response_is_taken_over_once_per_lapse(db_url: str) -> None:
    """Only a run still going whose lease ran out, and whose request is kept, is found; the first replica
    to take it gets it (its takeovers counted), a second finds it taken; the replica it was taken from
    renews and writes no more, and a shutdown's hand-off gives the takeover back."""
    store = ResponseStore(db_url)
    request = {"model": "up", "input": "x", "background": True}
    past, future = NOW - timedelta(seconds=1), NOW + timedelta(seconds=15)
    store.put(row("resp_lapsed", status="in_progress", lease_until=past, lease_token="first", request=request))
    store.put(row("resp_queued", status="queued", lease_until=past, request=request))
    store.put(row("resp_held", status="in_progress", lease_until=future, request=request))
    store.put(row("resp_ended", status="completed", lease_until=None, request=request))
    store.put(row("resp_no_request", status="in_progress", lease_until=past))  # made before requests were kept
    store.put(row("resp_plain"))
    assert sorted(store.lapsed(NOW)) == ["resp_lapsed", "resp_queued"]
    taken = store.take_over("resp_lapsed", NOW, future, "second")
    assert taken is not None and taken["takeovers"] == 1 and taken["request"] == request
    assert (taken["lease_until"], taken["lease_token"], taken["status"]) == (future, "second", "in_progress")
    assert store.take_over("resp_lapsed", NOW, future, "third") is None  # another replica's try: it is held now
    assert store.take_over("resp_held", NOW, future, "x") is None and store.take_over("resp_ended", NOW, future, "x") is None
    assert store.lapsed(NOW) == ["resp_queued"]
    # The first replica, back from being cut off: its lease is gone, and so is its say.
    assert store.renew("resp_lapsed", future + timedelta(seconds=5), "first") == TAKEN
    assert not store.advance("resp_lapsed", {"id": "resp_lapsed", "status": "completed"}, None, "first")
    assert not store.release("resp_lapsed", {"id": "resp_lapsed", "status": "queued"}, NOW, "first")
    assert store.renew("resp_lapsed", future + timedelta(seconds=5), "second") == "in_progress"
    held = store.get("resp_lapsed", NOW)
    assert held is not None and held["lease_until"] == future + timedelta(seconds=5)
    assert store.release("resp_lapsed", {"id": "resp_lapsed", "status": "queued"}, NOW, "second")
    handed = store.take_over("resp_lapsed", NOW, future, "fourth")
    assert handed is not None and handed["takeovers"] == 1 and handed["status"] == "queued"  # a hand-off: not counted
    assert store.advance("resp_lapsed", {"id": "resp_lapsed", "status": "cancelled"}, None, None)  # any replica cancels
    assert store.renew("resp_lapsed", future, "fourth") == "cancelled" and store.lapsed(NOW) == ["resp_queued"]
    assert store.get("resp_plain", NOW)["takeovers"] == 0  # type: ignore[index]
