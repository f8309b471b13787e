"""Webhooks over real sockets, with the openai SDK on both sides: endpoints made, listed, changed, rotated,
tested and deleted with `client.webhooks`; a background response's or a batch's end POSTed, signed, to a
real receiver, which checks it with `client.webhooks.unwrap`; an endpoint that fails gets the same
delivery again until it answers, or until it is given up; events queued while a receiver is down reach
it after the gateway restarts; two replicas on one database send each event once; the database away is
a 503 and the sender carries on once it is back; bad input is a 4xx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.webhooks import (
    BatchCompletedWebhookEvent,
    BatchExpiredWebhookEvent,
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
)

from storage.webhooks import EVENT_TYPES, WebhookStore
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import Gateway, Receiver, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_background import ended
from tests.gateway.test_gateway_batches import chat_line, jsonl
from tests.gateway.test_gateway_batches import ended as batch_ended
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres, free_port

FAST = {"first_retry_s": 0.2, "max_retry_s": 0.5, "poll_s": 0.2}


def config(tmp_path: Path, upstream: UpstreamProcess, **extra: Any) -> dict:
    return gateway_config(tmp_path, [model_entry("up", upstream.api_base)], **{"webhooks": FAST, **extra})


@pytest.fixture
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(config(tmp_path, upstream_processes[0])) as gateway:
        yield gateway


def unwrap(client: openai.OpenAI, post: tuple[bytes, dict[str, str]], secret: str) -> Any:
    return client.webhooks.unwrap(post[0], post[1], secret=secret)


def test_endpoints_are_made_listed_changed_and_deleted_with_the_openai_sdk(gw: Gateway, receiver: tuple) -> None:
    _, url = receiver
    with gw.openai() as client:
        made = [client.webhooks.create(name=f"hook {i}", url=url, event_types=["response.completed"])
                for i in range(3)]
        listed = [e.id for e in client.webhooks.list()]
        first_page = client.webhooks.list(limit=2)
        second_page = client.webhooks.list(limit=2, after=first_page.data[-1].id)
        got = client.webhooks.retrieve(made[0].id)
        unchanged = client.webhooks.update(made[0].id, name="hook 0")
        time.sleep(1.1)  # updated_at counts whole seconds
        changed = client.webhooks.update(made[0].id, name="renamed", event_types=["batch.completed", "batch.failed"])
        types = client.webhooks.event_types.list()
        deleted = client.webhooks.delete(made[1].id)
        with pytest.raises(openai.NotFoundError):
            client.webhooks.retrieve(made[1].id)
    assert all(m.signing_secret.startswith("whsec_") and len(m.signing_secret) == 50 for m in made)
    assert len({m.signing_secret for m in made}) == 3
    assert made[0].signing_secret_hint == f"whsec_...{made[0].signing_secret[-4:]}"
    assert listed == [m.id for m in reversed(made)]  # newest first
    assert [e.id for e in first_page.data] == listed[:2] and first_page.has_more
    assert [e.id for e in second_page.data] == listed[2:] and not second_page.has_more
    assert got.url == url and got.event_types == ["response.completed"] and got.name == "hook 0"
    assert "signing_secret" not in got.model_dump()  # shown once, when made or rotated
    assert unchanged.updated_at == made[0].updated_at
    assert changed.name == "renamed" and changed.event_types == ["batch.completed", "batch.failed"]
    assert changed.updated_at is not None and made[0].updated_at is not None and changed.updated_at > made[0].updated_at
    assert types.data == list(EVENT_TYPES)
    assert deleted.deleted and deleted.object == "webhook_endpoint.deleted"


@pytest.mark.parametrize("call, param", [
    (lambda c, url: c.webhooks.create(name="x", url=url, event_types=["fine_tuning.job.succeeded"]), "event_types"),
    (lambda c, url: c.webhooks.create(name="x", url=url, event_types=[]), "event_types"),
    (lambda c, url: c.webhooks.create(name="x", url="ftp://example.com/hook", event_types=["batch.failed"]), "url"),
    (lambda c, url: c.webhooks.create(name="x", url="not a url", event_types=["batch.failed"]), "url"),
    (lambda c, url: c.webhooks.create(name="", url=url, event_types=["batch.failed"]), "name"),
    (lambda c, url: c.post("/webhook_endpoints", body={"url": url, "event_types": ["batch.failed"]},
                           cast_to=object), "name"),
    (lambda c, url: c.post("/webhook_endpoints", body={"name": "x", "url": url, "event_types": ["batch.failed"],
                                                       "secret": "mine"}, cast_to=object), "secret"),
    (lambda c, url: c.webhooks.list(limit=0), "limit"),
    (lambda c, url: c.webhooks.list(after="we_nothing"), "after"),
    (lambda c, url: c.webhooks.rotate_secret("we_x", extra_body={"keep_old_secret_active_for_24_hours": "yes"}),
     "keep_old_secret_active_for_24_hours"),
])
def test_bad_input_is_a_400_naming_the_field(gw: Gateway, receiver: tuple, call: Any, param: str) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        call(client, receiver[1])
    assert refused.value.body["param"] == param  # type: ignore[index]


def test_unknown_endpoints_are_404s(gw: Gateway) -> None:
    with gw.openai() as client:
        for call in (lambda: client.webhooks.retrieve("we_gone"), lambda: client.webhooks.delete("we_gone"),
                     lambda: client.webhooks.update("we_gone", name="x"),
                     lambda: client.webhooks.rotate_secret("we_gone"),
                     lambda: client.webhooks.test("we_gone", event_type="batch.completed")):
            with pytest.raises(openai.NotFoundError):
                call()


def test_a_background_response_ending_is_sent_signed_and_the_sdk_unwraps_it(gw: Gateway, receiver: tuple) -> None:
    hook, url = receiver
    with gw.openai() as client:
        endpoint = client.webhooks.create(name="responses", url=url,
                                          event_types=["response.completed", "response.cancelled"])
        other = client.webhooks.create(name="batches only", url=url + "?batches", event_types=["batch.completed"])
        done = client.responses.create(model="up", input="[words:3] hi", background=True)
        ended(client, done.id)
        client.responses.create(model="up", input="[words:3] not in the background", store=True)
        slow = client.responses.create(model="up", input="[delay:5] [words:3] slow", background=True)
        wait_until(lambda: client.responses.retrieve(slow.id).status == "in_progress", what="in progress")
        client.responses.cancel(slow.id)
        ended(client, slow.id)
        posts = wait_until(lambda: len(hook.posts) >= 2 and hook.posts, what="two deliveries")
        time.sleep(0.5)  # nothing else comes
        events = [unwrap(client, post, endpoint.signing_secret) for post in hook.posts]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            unwrap(client, posts[0], other.signing_secret)
        with gw.http() as http:
            metrics = http.get("/metrics").text
    assert len(hook.posts) == 2
    by_type = {type(e): e for e in events}
    assert by_type[ResponseCompletedWebhookEvent].data.id == done.id
    assert by_type[ResponseCancelledWebhookEvent].data.id == slow.id
    assert all(e.object == "event" and e.id.startswith("evt_") and abs(e.created_at - time.time()) < 60
               for e in events)
    assert {headers["webhook-id"] for _, headers in posts} == {
        d["id"] for d in WebhookStore(gw.storage_url).deliveries(endpoint.id)}
    assert all(d["status"] == "delivered" and d["attempts"] == 1 and d["last_status_code"] == 200
               for d in WebhookStore(gw.storage_url).deliveries())
    assert 'pitstop_webhook_deliveries_total{event_type="response.completed",outcome="delivered"} 1.0' in metrics


@pytest.mark.parametrize("text, window, event_type, kind", [
    ("[words:2] x", "24h", "batch.completed", BatchCompletedWebhookEvent),
    ("[delay:5] x", "1s", "batch.expired", BatchExpiredWebhookEvent),  # its window closes first
])
def test_a_batch_ending_is_sent(gw: Gateway, receiver: tuple, text: str, window: str, event_type: str,
                                kind: type) -> None:
    hook, url = receiver
    with gw.openai() as client:
        endpoint = client.webhooks.create(name="batches", url=url, event_types=[event_type])
        uploaded = client.files.create(file=("q.jsonl", jsonl([chat_line("a", text)])), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window=window)  # type: ignore[arg-type]
        batch_ended(client, batch.id)
        wait_until(lambda: hook.posts, what="a delivery")
        event = unwrap(client, hook.posts[0], endpoint.signing_secret)
    assert isinstance(event, kind) and event.data.id == batch.id and event.type == event_type


def test_a_failing_endpoint_gets_the_same_delivery_again_until_it_answers(gw: Gateway, receiver: tuple) -> None:
    hook, url = receiver
    hook.refuse = 2
    with gw.openai() as client:
        endpoint = client.webhooks.create(name="flaky", url=url, event_types=["response.completed"])
        response = client.responses.create(model="up", input="[words:2] hi", background=True)
        wait_until(lambda: len(hook.posts) >= 3, what="the third try")
        events = [unwrap(client, post, endpoint.signing_secret) for post in hook.posts]
    assert len({headers["webhook-id"] for _, headers in hook.posts}) == 1  # receivers drop repeats by it
    assert {e.id for e in events} == {events[0].id} and events[0].data.id == response.id
    delivery = wait_until(lambda: (d := WebhookStore(gw.storage_url).deliveries()[0])["status"] == "delivered" and d,
                          what="delivered")
    assert delivery["attempts"] == 3 and delivery["last_status_code"] == 200


def test_a_delivery_nobody_takes_is_given_up(upstream_processes: tuple, tmp_path: Path, receiver: tuple) -> None:
    # 2.5 s before giving up: at 1 s a loaded machine made only the first try (stop 40's make test).
    hook, url = receiver
    hook.status = 500
    with running_gateway(config(tmp_path, upstream_processes[0], webhooks={**FAST, "give_up_after_s": 2.5})) as gw, \
            gw.openai() as client:
        client.webhooks.create(name="broken", url=url, event_types=["response.completed"])
        client.responses.create(model="up", input="[words:2] hi", background=True)
        delivery = wait_until(lambda: (d := WebhookStore(gw.storage_url).deliveries())
                              and d[0]["status"] == "failed" and d[0], what="given up")
        posts = len(hook.posts)
        time.sleep(0.6)
        with gw.http() as http:
            metrics = http.get("/metrics").text
    assert len(hook.posts) == posts >= 2 and delivery["attempts"] == posts
    assert delivery["last_status_code"] == 500 and delivery["finished_at"] is not None
    assert 'pitstop_webhook_deliveries_total{event_type="response.completed",outcome="failed"} 1.0' in metrics


def test_a_rotation_that_keeps_the_old_secret_signs_with_both(gw: Gateway, receiver: tuple) -> None:
    hook, url = receiver
    with gw.openai() as client:
        endpoint = client.webhooks.create(name="rotating", url=url, event_types=["response.completed"])
        kept = client.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
        client.responses.create(model="up", input="[words:2] one", background=True)
        first = wait_until(lambda: hook.posts and hook.posts[0], what="a delivery")
        dropped = client.webhooks.rotate_secret(endpoint.id)
        client.responses.create(model="up", input="[words:2] two", background=True)
        second = wait_until(lambda: len(hook.posts) >= 2 and hook.posts[1], what="a second delivery")
        for secret in (endpoint.signing_secret, kept.signing_secret):
            unwrap(client, first, secret)
        unwrap(client, second, dropped.signing_secret)
        for secret in (endpoint.signing_secret, kept.signing_secret):
            with pytest.raises(openai.InvalidWebhookSignatureError):
                unwrap(client, second, secret)
    assert len({endpoint.signing_secret, kept.signing_secret, dropped.signing_secret}) == 3
    assert len(first[1]["webhook-signature"].split()) == 2 and len(second[1]["webhook-signature"].split()) == 1


def test_a_test_event_is_sent_now_and_its_status_returned(gw: Gateway, receiver: tuple) -> None:
    hook, url = receiver
    with gw.openai() as client:
        endpoint = client.webhooks.create(name="tested", url=url, event_types=["batch.failed"])
        sent = client.webhooks.test(endpoint.id, event_type="response.failed")
        hook.status = 410
        refused = client.webhooks.test(endpoint.id, event_type="batch.completed")
        event = unwrap(client, hook.posts[0], endpoint.signing_secret)
        nowhere = client.webhooks.create(name="nowhere", url=f"http://127.0.0.1:{free_port()}/hook",
                                         event_types=["batch.failed"])
        with pytest.raises(openai.BadRequestError, match="did not answer") as unreachable:
            client.webhooks.test(nowhere.id, event_type="batch.failed")
    assert (sent.status_code, sent.event_type, sent.webhook_endpoint_id) == (200, "response.failed", endpoint.id)
    assert refused.status_code == 410 and event.type == "response.failed"
    assert unreachable.value.code == "webhook_unreachable"
    assert WebhookStore(gw.storage_url).deliveries() == []  # a test is not an event


def test_deleting_an_endpoint_drops_what_was_on_its_way(gw: Gateway) -> None:
    with gw.openai() as client:
        endpoint = client.webhooks.create(name="down", url=f"http://127.0.0.1:{free_port()}/hook",
                                          event_types=["response.completed"])
        client.responses.create(model="up", input="[words:2] hi", background=True)
        wait_until(lambda: (d := WebhookStore(gw.storage_url).deliveries()) and d[0]["attempts"] >= 1,
                   what="a failed try")
        client.webhooks.delete(endpoint.id)
    assert WebhookStore(gw.storage_url).deliveries() == []


def test_events_queued_while_the_receiver_is_down_reach_it_after_a_restart(
        upstream_processes: tuple, tmp_path: Path) -> None:
    port = free_port()
    raw = config(tmp_path, upstream_processes[0])
    with running_gateway(raw) as gw, gw.openai() as client:
        endpoint = client.webhooks.create(name="later", url=f"http://127.0.0.1:{port}/hook",
                                          event_types=["response.completed"])
        response = client.responses.create(model="up", input="[words:2] hi", background=True)
        wait_until(lambda: (d := WebhookStore(gw.storage_url).deliveries()) and d[0]["attempts"] >= 1,
                   what="a failed try")
    hook = Receiver()
    with serve_in_thread(hook.app(), port=port), \
            running_gateway(raw) as again, again.openai() as client:
        wait_until(lambda: hook.posts, what="the delivery, after the restart")
        event = unwrap(client, hook.posts[0], endpoint.signing_secret)
    assert event.data.id == response.id


def test_two_replicas_on_one_database_send_each_event_once(
        upstream_processes: tuple, tmp_path: Path, storage_url: str, receiver: tuple) -> None:
    hook, url = receiver
    raw = config(tmp_path, upstream_processes[0], storage_url=storage_url)
    with ExitStack() as stack:
        replicas = [stack.enter_context(running_gateway(raw)) for _ in range(2)]
        clients = [stack.enter_context(r.openai()) for r in replicas]
        endpoint = clients[0].webhooks.create(name="both", url=url, event_types=["response.completed"])
        made = [clients[i % 2].responses.create(model="up", input=f"[words:2] q{i}", background=True).id
                for i in range(16)]
        wait_until(lambda: len(hook.accepted()) >= 16, what="16 deliveries")
        time.sleep(1.0)  # a second copy of any would be here by now
        events = [unwrap(clients[0], post, endpoint.signing_secret) for post in hook.posts]
    assert len(hook.posts) == 16 and sorted(e.data.id for e in events) == sorted(made)


def test_a_master_key_guards_the_endpoints(upstream_processes: tuple, tmp_path: Path, receiver: tuple) -> None:
    raw = config(tmp_path, upstream_processes[0], auth={"require_keys": True, "master_key": "sk-master"})
    with running_gateway(raw) as gw:
        with gw.openai(api_key="sk-master") as admin:
            admin.webhooks.create(name="ok", url=receiver[1], event_types=["batch.completed"])
            assert len(admin.webhooks.list().data) == 1
        with gw.openai(api_key="sk-not-it") as stranger, pytest.raises(openai.AuthenticationError):
            stranger.webhooks.list()
    keys_only = config(tmp_path / "keys-only", upstream_processes[0], auth={"require_keys": True})
    with running_gateway(keys_only) as gw, gw.openai() as client, pytest.raises(openai.PermissionDeniedError):
        client.webhooks.event_types.list()


def test_the_database_away_is_a_503_and_events_flow_once_it_is_back(
        upstream_processes: tuple, tmp_path: Path, cluster: ThrowawayPostgres, receiver: tuple) -> None:
    hook, url = receiver
    with running_gateway(config(tmp_path, upstream_processes[0], storage_url=cluster.url)) as gw, \
            gw.openai() as client:
        endpoint = client.webhooks.create(name="db", url=url, event_types=["response.completed"])
        cluster.stop("immediate")
        try:
            with pytest.raises(openai.InternalServerError, match="webhook endpoints are unavailable") as refused:
                client.webhooks.list()
            assert refused.value.status_code == 503
            time.sleep(1.0)  # the sender looks a few times meanwhile, and fails
        finally:
            cluster.start()
        response = wait_until(lambda: _try(lambda: client.responses.create(model="up", input="[words:2] hi",
                                                                            background=True)),
                              what="a background response once the database is back")
        wait_until(lambda: hook.posts, what="its event")
        assert unwrap(client, hook.posts[0], endpoint.signing_secret).data.id == response.id


def _try(call: Any) -> Any:
    try:
        return call()
    except openai.APIError:
        return None
