"""Background responses (`background: true`) over a real socket with the openai SDK: answered `queued`,
run on their own (`in_progress`, then `completed` or `failed`), polled with `responses.retrieve`,
stopped with `responses.cancel`, continued once complete; streamed, going on when the client leaves
and resumed with `starting_after`; kept in a conversation's turn; polled and cancelled on another
replica; let go when the gateway shuts down, and taken over, as the same response, by the next gateway
that looks once the lease of the replica running it lapsed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
import sqlalchemy as sa
from openai.types.responses import Response

from gateway.background import CANCELLED, GONE, MAX_TAKEOVERS, SHUTDOWN, TAKEN_ELSEWHERE, TOO_MANY_TAKEOVERS
from gateway.section_config import ResponsesConfig
from gateway.stored_responses import StoredResponses
from storage.db import create_engine
from storage.migrate import upgrade
from storage.models import StoredResponse
from storage.responses import ResponseStore, StoredResponseWriter
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_stored_responses import assistant, sent, user
from tests.gateway.upstream import UpstreamProcess

ENDED = ("completed", "incomplete", "failed", "cancelled")


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    raw = gateway_config(tmp_path_factory.mktemp("background"), [model_entry("up", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


def ended(client: openai.OpenAI, response_id: str) -> Response:
    return wait_until(lambda: (r := client.responses.retrieve(response_id)).status in ENDED and r,
                      what=f"{response_id} ended")


def _request_id(response_id: str) -> str:
    return "req-" + response_id.removeprefix("resp_")


def test_a_background_response_is_queued_runs_and_is_polled_until_it_completes(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        queued = client.responses.create(model="up", input="[delay:1] [words:3] hello", background=True)
        with pytest.raises(openai.BadRequestError, match="still") as early:  # not before it has completed
            client.responses.create(model="up", input="next", previous_response_id=queued.id)
        wait_until(lambda: client.responses.retrieve(queued.id).status == "in_progress", what="in progress")
        with gw.http() as http:
            running = http.get("/metrics").text
        done = ended(client, queued.id)
        follow = client.responses.create(model="up", input="next", previous_response_id=queued.id)
    assert (queued.status, queued.background, queued.output) == ("queued", True, [])
    assert "pitstop_background_responses 1.0" in running
    assert early.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert done.status == "completed" and done.background and len(done.output_text.split()) == 3
    assert done.usage is not None and done.usage.output_tokens == 3 and done.id == queued.id
    assert follow.status == "completed" and sent(upstreams) == [
        user("[delay:1] [words:3] hello"), assistant(done.output_text), user("next")]
    row = gw.row(_request_id(queued.id))  # a background run leaves its outcome row as any request does
    assert (row["status"], row["endpoint"], row["completion_tokens"]) == ("ok", "responses", 3)


def test_a_background_response_is_cancelled(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        running = client.responses.create(model="up", input="[delay:10] slow", background=True)
        wait_until(lambda: upstreams[0].stats()["requests"] >= 1, what="the run upstream")
        cancelled = client.responses.cancel(running.id)
        again = client.responses.cancel(running.id)  # as it is
        read = client.responses.retrieve(running.id)
        quick = client.responses.create(model="up", input="quick", background=True)
        finished = ended(client, quick.id)
        unchanged = client.responses.cancel(quick.id)  # it has ended: as it is
        foreground = client.responses.create(model="up", input="x")
        with pytest.raises(openai.BadRequestError, match="only a response created with 'background'"):
            client.responses.cancel(foreground.id)
    assert [r.status for r in (cancelled, again, read)] == ["cancelled"] * 3 and read.output == []
    assert finished.status == unchanged.status == "completed" and unchanged.output_text == finished.output_text
    row = gw.row(_request_id(running.id))
    assert (row["status"], row["http_status"]) == ("aborted", 499)


def test_a_run_taken_over_by_another_replica_stops_here_and_writes_no_more(gw: Gateway, upstreams: tuple) -> None:
    """Its lease lapsed while this replica was cut off from the database, and another replica took it over
    (here: its row's lease token changed under it): at its next renewal the run stops, and its end is
    the other replica's to write."""
    store = ResponseStore(gw.storage_url)
    with gw.openai() as client:
        running = client.responses.create(model="up", input="[delay:20] slow", background=True)
        wait_until(lambda: client.responses.retrieve(running.id).status == "in_progress", what="in progress")
        with store._engine.begin() as connection:  # what another replica's takeover writes
            connection.execute(sa.update(StoredResponse.__table__).where(StoredResponse.__table__.c.id == running.id)
                               .values(lease_token="another replica's"))
        stopped = wait_until(lambda: gw.rows([_request_id(running.id)]), what="the run stopped", timeout=15)
        read = client.responses.retrieve(running.id)
    assert stopped[0]["status"] == "aborted" and stopped[0]["error"] == TAKEN_ELSEWHERE
    assert read.status == "in_progress"  # as the replica that took it over has it


def test_a_background_response_whose_call_fails_ends_failed(gw: Gateway) -> None:
    with gw.openai() as client:
        response = client.responses.create(model="up", input="[fail:500] x", background=True)
        done = ended(client, response.id)
    assert done.status == "failed" and done.error is not None and done.error.code == "server_error"
    assert gw.row(_request_id(response.id))["http_status"] == 500  # the upstream's, as a foreground call gets it


def test_a_background_response_not_to_be_stored_is_kept_for_polling_only(gw: Gateway) -> None:
    with gw.openai() as client:
        response = client.responses.create(model="up", input="x", background=True, store=False)
        done = ended(client, response.id)
    row = ResponseStore(gw.storage_url).get(response.id, datetime.now(UTC))
    assert done.status == "completed" and done.store is False
    assert row is not None and row["expires_at"] - row["created_at"] < timedelta(minutes=11)


def test_a_background_turn_holds_its_conversation_until_it_ends(gw: Gateway) -> None:
    with gw.openai() as client:
        conversation = client.conversations.create()
        response = client.responses.create(model="up", input="[delay:1] first", conversation=conversation.id,
                                           background=True)
        with pytest.raises(openai.BadRequestError) as locked:
            client.responses.create(model="up", input="meanwhile", conversation=conversation.id)
        done = ended(client, response.id)
        after = client.responses.create(model="up", input="second", conversation=conversation.id)
        items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert locked.value.body["code"] == "conversation_locked"  # type: ignore[index]
    assert [item.id for item in items][1::2] == [done.output[0].id, after.output[0].id]


def test_a_streamed_background_response_goes_on_when_its_client_leaves_and_is_resumed(gw: Gateway) -> None:
    with gw.openai() as client:
        whole = list(client.responses.create(model="up", input="[words:5] all", background=True, stream=True))
        stream = client.responses.create(model="up", input="[words:40] go", background=True, stream=True)
        first = []
        for event in stream:
            first.append(event)
            if len(first) == 4:
                break
        stream.close()  # the client leaves: the run goes on
        done = ended(client, first[0].response.id)  # type: ignore[union-attr]
        resumed = list(client.responses.retrieve(done.id, stream=True, starting_after=first[-1].sequence_number))
    assert whole[0].type == "response.created" and whole[0].response.background  # type: ignore[union-attr]
    assert whole[-1].type == "response.completed" and len(whole[-1].response.output_text.split()) == 5  # type: ignore[union-attr]
    events = first + resumed
    assert [e.sequence_number for e in events] == list(range(len(events)))  # none lost, none twice
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert resumed[-1].type == "response.completed" and text == done.output_text and len(text.split()) == 40


def test_a_streamed_background_response_that_is_cancelled_ends_its_stream(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, ThreadPoolExecutor(1) as pool:
        stream = client.responses.create(model="up", input="[words:400] long", background=True, stream=True)
        first = next(iter(stream))
        rest = pool.submit(list, stream)
        cancelled = client.responses.cancel(first.response.id)  # type: ignore[union-attr]
        followed = rest.result(timeout=20)
    assert cancelled.status == "cancelled"
    assert not any(e.type == "response.completed" for e in followed)
    row = gw.row(_request_id(first.response.id))  # type: ignore[union-attr]
    assert (row["status"], row["http_status"], row["error"]) == ("aborted", 499, CANCELLED)


@pytest.mark.parametrize("query, param", [("stream=true&starting_after=x", "starting_after"), ("stream=true", "stream")])
def test_bad_background_requests_are_clear_400s(gw: Gateway, query: str, param: str) -> None:
    with gw.http() as http:
        answer = http.post("/v1/responses", json={"model": "up", "input": "x", "background": "yes"})
        stored = http.post("/v1/responses", json={"model": "up", "input": "x"}).json()["id"]
        resumed = http.get(f"/v1/responses/{stored}?{query}")  # not a background response
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "background"
    assert resumed.status_code == 400 and resumed.json()["error"]["param"] == param


def test_a_gateway_that_stores_no_responses_runs_none_in_the_background(tmp_path: Path, upstreams: tuple) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)]) | {"responses": {"store": False}}
    with running_gateway(raw) as gw, gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="up", input="x", background=True)
    assert refused.value.body["param"] == "background"  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 0


def test_a_shutdown_lets_a_running_background_response_go_and_the_next_start_takes_it_over(
        tmp_path: Path, upstreams: tuple) -> None:
    """Nothing accepted is lost: cut by the shutdown, the run is `queued` again with its lease lapsed (a
    hand-off, not counted as a replica that stopped under it); the gateway started again serves it."""
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)])
    raw["server"] = {**raw.get("server", {}), "graceful_shutdown_s": 0.5}
    with running_gateway(raw) as gw, gw.openai() as client:
        response = client.responses.create(model="up", input="[delay:2] [words:4] slow", background=True)
        wait_until(lambda: upstreams[0].stats()["requests"] >= 1, what="the run upstream")
    let_go = ResponseStore(gw.storage_url).get(response.id, datetime.now(UTC))
    with running_gateway(raw) as again, again.openai() as client:
        done = ended(client, response.id)
    rows = {row["request_id"]: row for row in again.rows()}
    assert let_go is not None and let_go["status"] == "queued" and let_go["takeovers"] == -1
    assert let_go["lease_until"] <= datetime.now(UTC) and let_go["request"]["input"] == "[delay:2] [words:4] slow"
    assert done.status == "completed" and len(done.output_text.split()) == 4
    assert (done.id, done.created_at) == (response.id, response.created_at)
    assert upstreams[0].stats()["requests"] == 2  # cut, then served again
    first = rows.pop(_request_id(response.id))
    assert first["status"] == "aborted" and SHUTDOWN in first["error"]
    (second,) = rows.values()  # the run taken over: a request of its own, naming the response
    assert second["status"] == "ok" and second["extra"]["taken_over"] == response.id


def _lapsed_row(store: ResponseStore, response_id: str, request: dict | None, key_id: str | None = None,
                takeovers: int = 0) -> None:
    """A background response as a replica killed mid-run leaves it: in progress, its lease lapsed."""
    now = datetime.now(UTC)
    response = {"id": response_id, "object": "response", "created_at": int(now.timestamp()) - 60,
                "status": "in_progress", "output": [], "error": None, "background": True}
    store.put(store.complete({
        "id": response_id, "created_at": now, "expires_at": now + timedelta(days=1), "api_key_id": key_id,
        "ancestors": [], "input_items": [], "status": "in_progress", "lease_until": now - timedelta(seconds=1),
        "response": response, "request": request, "takeovers": takeovers}))


def test_runs_whose_replica_stopped_are_taken_over_at_start_or_end_failed(tmp_path: Path, upstreams: tuple) -> None:
    """A gateway starting takes over the lapsed runs and serves them as the same responses; one whose
    replicas stopped under it too many times, one whose key is gone, and one refused (its model is no
    longer served) end failed, with why."""
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)])
    db = create_engine(raw["storage"]["url"])
    upgrade(db)
    store = ResponseStore(db)
    ask = {"model": "up", "input": "[words:5] again", "background": True, "stream": True}
    _lapsed_row(store, "resp_lapsed", ask)
    _lapsed_row(store, "resp_unlucky", ask, takeovers=MAX_TAKEOVERS)
    _lapsed_row(store, "resp_keyless", ask, key_id="key-gone")
    _lapsed_row(store, "resp_unserved", {**ask, "model": "retired"})
    with running_gateway(raw) as gw, gw.openai() as client:
        done = ended(client, "resp_lapsed")
        unlucky, unserved = ended(client, "resp_unlucky"), ended(client, "resp_unserved")
        resumed = list(client.responses.retrieve("resp_lapsed", stream=True, starting_after=3))  # type: ignore[call-overload]
        with gw.http() as http:  # the keyless one may be looked at last
            metrics = wait_until(lambda: 'outcome="failed"} 3.0' in (text := http.get("/metrics").text) and text,
                                 what="four takeovers counted")
    keyless = store.get("resp_keyless", datetime.now(UTC))
    assert done.status == "completed" and len(done.output_text.split()) == 5 and done.id == "resp_lapsed"
    assert [e.type for e in resumed] == ["response.completed"]  # a run taken over is not streamed again
    assert upstreams[0].stats()["requests"] == 1
    assert unlucky.status == "failed" and unlucky.error is not None and unlucky.error.message == TOO_MANY_TAKEOVERS
    assert keyless is not None and keyless["response"]["error"]["message"] == "its API key was revoked"
    assert unserved.status == "failed" and unserved.error is not None and "retired" in unserved.error.message
    assert 'pitstop_background_takeovers_total{outcome="resumed"} 1.0' in metrics
    assert 'pitstop_background_takeovers_total{outcome="failed"} 3.0' in metrics


def test_a_run_whose_replica_stopped_waits_for_a_takeover_unless_its_request_was_not_kept(tmp_path: Path) -> None:
    """Its lease lapsed: the replica running it is gone (killed, or cut off from the database). A run made
    before requests were kept cannot be run again: it has failed."""
    db = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(db)
    store = ResponseStore(db)
    now = datetime.now(UTC)
    _lapsed_row(store, "resp_gone", None)
    _lapsed_row(store, "resp_waiting", {"model": "up", "input": "x", "background": True})
    store.put(store.complete({
        "id": "resp_live", "created_at": now, "expires_at": now + timedelta(days=1), "api_key_id": None,
        "ancestors": [], "input_items": [], "status": "in_progress", "lease_until": now + timedelta(seconds=15),
        "response": {"id": "resp_live", "object": "response", "status": "in_progress", "output": [], "error": None}}))
    responses = StoredResponses(ResponsesConfig(), store, StoredResponseWriter(db))
    gone, waiting, live = (asyncio.run(responses.find(rid, None)) for rid in ("resp_gone", "resp_waiting", "resp_live"))
    assert gone["status"] == "failed" and gone["error"] == {"code": "server_error", "message": GONE}
    assert waiting["status"] == live["status"] == "in_progress"
