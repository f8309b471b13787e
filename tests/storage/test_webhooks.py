"""The webhook outbox on SQLite and PostgreSQL: an event's deliveries commit with the change that made
it or not at all, go to the endpoints that take its type, are claimed by one sender at a time (a claim
that lapses frees them), are retried, finished and purged; an event for a URL of the config's goes as it is,
unsigned; and a delivery's signature is Standard Webhooks' (their published vector) and what the openai
SDK checks."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import openai
import pytest
from sqlalchemy import update

from gateway.webhooks import delivery_body, event_body, new_secret, sign, signed_headers
from storage.db import create_engine
from storage.files import BatchStore
from storage.responses import ResponseStore
from storage.webhooks import BUDGET_EVENT, DELIVERIES, EventOutbox, WebhookStore, signing_secrets


def endpoint(store: WebhookStore, endpoint_id: str, event_types: list[str], **values: object) -> None:
    now = datetime.now(UTC)
    store.add_endpoint({"id": endpoint_id, "created_at": now, "updated_at": now, "name": endpoint_id,
                        "url": f"http://127.0.0.1:9/{endpoint_id}", "event_types": event_types,
                        "secret": new_secret(), "previous_secret": None, "previous_secret_until": None, **values})


def test_an_event_goes_to_the_endpoints_that_take_it_in_the_changes_transaction(db_url: str) -> None:
    store, engine = WebhookStore(db_url), create_engine(db_url)
    endpoint(store, "we_a", ["response.completed", "batch.completed"])
    endpoint(store, "we_b", ["response.completed"])
    endpoint(store, "we_c", ["batch.failed"])
    with engine.begin() as connection:
        assert EventOutbox.queue_event(connection, "response.completed", "resp_1") == 2
        assert EventOutbox.queue_event(connection, "response.in_progress", "resp_1") == 0  # not an event
    with pytest.raises(RuntimeError), engine.begin() as connection:
        assert EventOutbox.queue_event(connection, "batch.completed", "batch_1") == 1
        raise RuntimeError("the change fails: its event must not be sent")
    rows = store.deliveries()
    assert sorted(r["endpoint_id"] for r in rows) == ["we_a", "we_b"]
    assert {r["event_id"] for r in rows} == {rows[0]["event_id"]} and rows[0]["id"] != rows[1]["id"]
    assert {(r["status"], r["attempts"], r["object_id"]) for r in rows} == {("pending", 0, "resp_1")}
    engine.dispose()


def test_stores_queue_an_event_when_a_response_or_batch_ends_and_wake_after_the_commit(db_url: str) -> None:
    store, outbox, woken = WebhookStore(db_url), EventOutbox(), []
    outbox.wake = lambda: woken.append(len(store.deliveries()))  # what a woken sender would find
    endpoint(store, "we_all", ["response.completed", "batch.cancelled"])
    responses, batches = ResponseStore(db_url, outbox), BatchStore(db_url, outbox)
    now = datetime.now(UTC)
    responses.put({"id": "resp_1", "created_at": now, "expires_at": now + timedelta(days=1), "api_key_id": None,
                   "previous_response_id": None, "ancestors": [], "session_id": None, "input_items": [],
                   "response": {"status": "queued"}, "status": "queued", "lease_until": now, "lease_token": "t",
                   "request": None})
    assert responses.advance("resp_1", {"status": "in_progress"}, now, "t")
    assert woken == []  # no event yet
    assert responses.advance("resp_1", {"status": "completed"}, None, "t")
    assert not responses.advance("resp_1", {"status": "cancelled"}, None, None)  # already ended: no change
    batches.put({"id": "batch_1", "created_at": now, "api_key_id": None, "status": "in_progress",
                 "lease_until": now, "batch": {"status": "in_progress"}})
    assert batches.advance("batch_1", {"status": "cancelled"}, None)
    assert woken == [1, 2]
    assert [(r["event_type"], r["object_id"]) for r in store.deliveries()] == [
        ("response.completed", "resp_1"), ("batch.cancelled", "batch_1")]


def test_a_delivery_is_claimed_by_one_sender_and_freed_when_its_claim_lapses(db_url: str) -> None:
    store, engine = WebhookStore(db_url), create_engine(db_url)
    endpoint(store, "we_a", ["batch.completed"])
    with engine.begin() as connection:
        for i in range(40):
            EventOutbox.queue_event(connection, "batch.completed", f"batch_{i}")
    now = datetime.now(UTC)
    later = now + timedelta(seconds=60)
    with ThreadPoolExecutor(4) as pool:  # four senders at once
        claims = list(pool.map(lambda token: store.claim(now, later, token, 40), ["a", "b", "c", "d"]))
    ids = [due.id for claim in claims for due in claim]
    assert len(ids) == len(set(ids)) == 40  # each delivery once, whoever got it
    assert store.claim(now, later, "e", 40) == []  # all held
    first = claims[0][0] if claims[0] else next(c[0] for c in claims if c)
    assert first.url == "http://127.0.0.1:9/we_a" and first.attempts == 0 and len(first.secrets) == 1
    again = store.claim(later + timedelta(seconds=1), later + timedelta(seconds=61), "f", 100)
    assert len(again) == 40  # their sender stopped: the claims lapsed
    token_of = {due.id: token for token, claim in zip("abcd", claims, strict=True) for due in claim}
    assert not store.finish(first.id, token_of[first.id], True, now, 200, None)  # the old claim is gone
    assert store.finish(first.id, "f", True, now, 200, None)
    assert store.retry(again[1].id, "f", now + timedelta(hours=1), 503, "HTTP 503")
    rows = {r["id"]: r for r in store.deliveries()}
    assert (rows[first.id]["status"], rows[first.id]["attempts"]) == ("delivered", 1)
    assert (rows[again[1].id]["status"], rows[again[1].id]["attempts"], rows[again[1].id]["last_error"]) == (
        "pending", 1, "HTTP 503")
    engine.dispose()


def test_a_retry_waits_for_its_time_and_finished_deliveries_are_purged(db_url: str) -> None:
    store, engine = WebhookStore(db_url), create_engine(db_url)
    endpoint(store, "we_a", ["batch.failed"])
    with engine.begin() as connection:
        EventOutbox.queue_event(connection, "batch.failed", "batch_1")
        EventOutbox.queue_event(connection, "batch.failed", "batch_2")
    now = datetime.now(UTC) + timedelta(seconds=1)
    one, two = store.claim(now, now + timedelta(seconds=30), "t", 10)
    store.retry(one.id, "t", now + timedelta(seconds=10), None, "ConnectError")
    store.finish(two.id, "t", False, now, 500, "HTTP 500")
    assert store.claim(now + timedelta(seconds=5), now + timedelta(seconds=35), "u", 10) == []
    (due,) = store.claim(now + timedelta(seconds=11), now + timedelta(seconds=41), "u", 10)
    assert due.id == one.id and due.attempts == 1
    assert store.purge(now - timedelta(seconds=1)) == 0
    assert store.purge(now + timedelta(seconds=1)) == 1  # the one given up; the pending one stays
    assert [r["id"] for r in store.deliveries()] == [one.id]
    engine.dispose()


def test_deleting_an_endpoint_drops_its_pending_deliveries_only(db_url: str) -> None:
    store, engine = WebhookStore(db_url), create_engine(db_url)
    endpoint(store, "we_a", ["batch.failed"])
    endpoint(store, "we_b", ["batch.failed"])
    with engine.begin() as connection:
        EventOutbox.queue_event(connection, "batch.failed", "batch_1")
    assert store.delete_endpoint("we_a") and not store.delete_endpoint("we_a")
    assert [r["endpoint_id"] for r in store.deliveries()] == ["we_b"]
    assert [e["id"] for e in store.endpoints()] == ["we_b"]
    engine.dispose()


def test_a_kept_old_secret_signs_until_its_day_is_over(db_url: str) -> None:
    store, engine = WebhookStore(db_url), create_engine(db_url)
    now = datetime.now(UTC)
    endpoint(store, "we_a", ["batch.failed"], previous_secret="whsec_b2xk", previous_secret_until=now + timedelta(hours=1))
    row = store.endpoint("we_a")
    assert row is not None and signing_secrets(row, now) == (row["secret"], "whsec_b2xk")
    assert signing_secrets(row, now + timedelta(hours=2)) == (row["secret"],)
    with engine.begin() as connection:
        EventOutbox.queue_event(connection, "batch.failed", "batch_1")
        connection.execute(update(DELIVERIES).values(next_attempt_at=now))
    assert store.claim(now, now + timedelta(seconds=30), "t", 1)[0].secrets == (row["secret"], "whsec_b2xk")
    assert store.claim(now + timedelta(hours=2), now + timedelta(hours=3), "u", 1)[0].secrets == (row["secret"],)
    engine.dispose()


def test_the_signature_is_standard_webhooks_and_the_openai_sdk_checks_it() -> None:
    # The Standard Webhooks specification's published example.
    payload = b'{"test": 2432232314}'
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, payload) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    secret, other = new_secret(), new_secret()
    body = event_body("evt_1", "batch.completed", 1764979200, "batch_1")
    client = openai.OpenAI(api_key="none", base_url="http://127.0.0.1:9/v1")
    event = client.webhooks.unwrap(body, signed_headers("wh_1", (secret,), body), secret=secret)
    assert (event.type, event.data.id, event.created_at) == ("batch.completed", "batch_1", 1764979200)
    both = signed_headers("wh_2", (secret, other), body)
    for key in (secret, other):
        client.webhooks.verify_signature(body, both, secret=key)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body + b" ", both, secret=secret)


def test_an_event_for_a_url_of_the_configs_goes_as_it_is_and_unsigned(db_url: str) -> None:
    store = WebhookStore(db_url)
    endpoint(store, "we_a", [BUDGET_EVENT])
    alert = {"type": BUDGET_EVENT, "key_id": "key_1", "text": "Pitstop: ..."}
    assert store.queue(BUDGET_EVENT, "key_1", alert, ["http://127.0.0.1:9/slack"]) == 2
    now = datetime.now(UTC) + timedelta(seconds=1)
    by_url = {due.url: due for due in store.claim(now, now + timedelta(seconds=30), "t", 10)}
    raw, signed = by_url["http://127.0.0.1:9/slack"], by_url["http://127.0.0.1:9/we_a"]
    assert raw.raw and raw.secrets == () and json.loads(delivery_body(raw)) == alert
    assert "webhook-signature" not in signed_headers(raw.id, raw.secrets, delivery_body(raw))
    event = json.loads(delivery_body(signed))
    assert not signed.raw and (event["type"], event["data"], event["object"]) == (BUDGET_EVENT, alert, "event")
    assert event["id"] == signed.event_id == raw.event_id
