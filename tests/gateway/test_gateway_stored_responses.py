"""Stored Responses over a real socket with the openai SDK: `previous_response_id` continues a
conversation (whole and streamed, text and function calls), a chain is one agent session, responses are
retrieved, listed and deleted, belong to their key, honour `store: false`, the config and retention,
and survive a database outage."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from storage.keys import KeyStore
from storage.responses import ResponseStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_responses import WEATHER
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    raw = gateway_config(tmp_path_factory.mktemp("stored"), [model_entry("up", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


def sent(upstreams: tuple) -> list[dict]:
    """The messages of the last request the upstream got."""
    return upstreams[0].stats()["bodies"][-1]["messages"]


def _now() -> datetime:
    return datetime.now(UTC)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_a_conversation_continues_from_its_previous_response(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        first = client.responses.create(model="up", input="one two", instructions="be brief")
        second = client.responses.create(model="up", input="three", previous_response_id=first.id,
                                         instructions="be kind")
        # The chain's items, not its instructions (as at OpenAI): each request gives its own.
        assert sent(upstreams) == [{"role": "system", "content": "be kind"}, user("one two"),
                                   assistant(first.output_text), user("three")]
        third = client.responses.create(model="up", input=[{"role": "user", "content": "four"}],
                                        previous_response_id=second.id)
        assert sent(upstreams) == [user("one two"), assistant(first.output_text), user("three"),
                                   assistant(second.output_text), user("four")]
        retrieved = client.responses.retrieve(second.id)
    assert first.store and first.previous_response_id is None
    assert (second.previous_response_id, third.previous_response_id) == (first.id, second.id)
    assert retrieved.model_dump() == second.model_dump()
    rows = [gw.row("req-" + r.id.removeprefix("resp_")) for r in (first, second, third)]
    # From its second turn the chain is one session, named by its first response.
    assert [r["session_id"] for r in rows] == [None, first.id, first.id]
    assert [r["turn"] for r in rows] == [None, 1, 2]


def test_an_agent_chain_answers_its_calls_as_one_session(gw: Gateway, upstreams: tuple) -> None:
    """Function calls and their outputs continue by id; the tool's time is the session's wait."""
    with gw.openai() as client:
        first = client.responses.create(model="up", input="weather in Oslo", tools=[WEATHER])
        turns = [first]
        for _ in range(2):
            call = turns[-1].output[0]
            assert call.type == "function_call"
            time.sleep(0.3)  # the tool runs
            turns.append(client.responses.create(
                model="up", previous_response_id=turns[-1].id, tools=[WEATHER],
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]))
        calls = [t.output[0] for t in turns]
        assert sent(upstreams) == [user("weather in Oslo"), *[
            message for call in calls[:2] for message in (
                {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function", "function": {
                    "name": "get_weather", "arguments": call.arguments}}]},
                {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"})]]
    with gw.http() as http:
        session = http.get(f"/v1/sessions/{first.id}")
    assert session.status_code == 200 and session.json()["turns"] == 2
    last = gw.row("req-" + turns[-1].id.removeprefix("resp_"))
    assert last["session_id"] == first.id and last["extra"]["tools"] == ["get_weather"]
    assert last["extra"]["tool_wait_s"] >= 0.3


def test_a_streamed_response_is_stored_before_its_completed_event(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        streamed = http.post("/v1/responses", json={"model": "up", "input": "[words:3] go", "stream": True})
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        final = events[-1]["response"]
        retrieved = http.get(f"/v1/responses/{final['id']}").json()
    assert events[-1]["type"] == "response.completed" and retrieved == final and final["store"] is True
    with gw.openai() as client:
        continued = client.responses.create(model="up", input="more", previous_response_id=final["id"])
    text = final["output"][0]["content"][0]["text"]
    assert sent(upstreams) == [user("[words:3] go"), assistant(text), user("more")]
    assert continued.previous_response_id == final["id"]


def test_input_items_are_listed_a_page_at_a_time(gw: Gateway) -> None:
    given = [{"role": "developer", "content": "d"}, {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
             {"role": "user", "content": "b"}]
    with gw.openai() as client:
        response = client.responses.create(model="up", input=given)
        ascending = list(client.responses.input_items.list(response.id, limit=1, order="asc"))  # three pages
        descending = list(client.responses.input_items.list(response.id))
    assert [(i.type, i.role, i.content[0].text) for i in ascending] == [
        ("message", "developer", "d"), ("message", "user", "a"), ("message", "user", "b")]
    assert [i.id for i in descending] == [i.id for i in reversed(ascending)]
    assert len({i.id for i in ascending}) == 3


def test_a_deleted_response_cannot_be_read_or_continued(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        first = client.responses.create(model="up", input="x")
        second = client.responses.create(model="up", input="y", previous_response_id=first.id)
        client.responses.delete(first.id)
        for call in (lambda: client.responses.retrieve(first.id), lambda: client.responses.delete(first.id),
                     lambda: client.responses.input_items.list(first.id)):
            with pytest.raises(openai.NotFoundError, match="no response"):
                call()
        requests = upstreams[0].stats()["requests"]
        # A chain with a deleted response in it can no longer be continued either.
        with pytest.raises(openai.NotFoundError, match="deleted or has expired") as refused:
            client.responses.create(model="up", input="z", previous_response_id=second.id)
    assert refused.value.body["param"] == "previous_response_id"
    assert refused.value.body["code"] == "previous_response_not_found"
    assert upstreams[0].stats()["requests"] == requests


def test_responses_belong_to_the_key_that_made_them(gw: Gateway) -> None:
    keys = KeyStore(gw.storage_url)
    (_, mine), (_, theirs) = keys.create("mine"), keys.create("theirs")
    with gw.openai(api_key=mine) as owner, gw.openai(api_key=theirs) as other, gw.openai() as anonymous:
        made = owner.responses.create(model="up", input="secret plans")
        for client in (other, anonymous):
            for call in (lambda c=client: c.responses.retrieve(made.id), lambda c=client: c.responses.delete(made.id),
                         lambda c=client: c.responses.input_items.list(made.id),
                         lambda c=client: c.responses.create(model="up", input="x", previous_response_id=made.id)):
                with pytest.raises(openai.NotFoundError):
                    call()
        assert owner.responses.retrieve(made.id).output_text == made.output_text
        assert owner.responses.create(model="up", input="x", previous_response_id=made.id).status == "completed"


def test_store_false_keeps_nothing(gw: Gateway) -> None:
    with gw.openai() as client:
        response = client.responses.create(model="up", input="x", store=False)
        assert response.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="up", input="y", previous_response_id=response.id)
    assert ResponseStore(gw.storage_url).get(response.id, _now()) is None


@pytest.mark.parametrize("method, path, status, param", [
    ("GET", "/v1/responses/resp_nope", 404, None),
    ("GET", "/v1/responses/{id}?stream=true", 400, "stream"),
    ("GET", "/v1/responses/{id}/input_items?limit=0", 400, "limit"),
    ("GET", "/v1/responses/{id}/input_items?limit=101", 400, "limit"),
    ("GET", "/v1/responses/{id}/input_items?order=up", 400, "order"),
    ("GET", "/v1/responses/{id}/input_items?after=msg_nope", 400, "after"),
    ("GET", "/v1/responses/resp_nope/input_items", 404, None),
    ("POST", "/v1/responses/{id}/cancel", 400, None),
    ("POST", "/v1/responses/resp_nope/cancel", 404, None),
    ("DELETE", "/v1/responses/resp_nope", 404, None),
])
def test_bad_reads_are_clear_4xx(gw: Gateway, method: str, path: str, status: int, param: str | None) -> None:
    with gw.http() as http:
        made = http.post("/v1/responses", json={"model": "up", "input": "x"}).json()
        response = http.request(method, path.format(id=made["id"]))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    if response.status_code == 404:
        assert error["code"] == "response_not_found"


def test_an_unknown_previous_response_is_a_404_before_any_upstream_call(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, pytest.raises(openai.NotFoundError) as refused:
        client.responses.create(model="up", input="x", previous_response_id="resp_123")
    assert refused.value.body["param"] == "previous_response_id"
    assert upstreams[0].stats()["requests"] == 0


def test_a_gateway_that_stores_none_says_so(tmp_path: Path, upstreams: tuple) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], responses={"store": False})
    with running_gateway(raw) as gw, gw.openai() as client:
        response = client.responses.create(model="up", input="x", store=True)
        assert response.store is False
        with pytest.raises(openai.BadRequestError, match="responses.store is false"):
            client.responses.create(model="up", input="y", previous_response_id=response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)


def test_expired_responses_are_gone(tmp_path: Path, upstreams: tuple) -> None:
    retention_s = 1.5
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)],
                         responses={"retention_days": retention_s / 86400})
    with running_gateway(raw) as gw, gw.openai() as client:
        response = client.responses.create(model="up", input="x")
        assert client.responses.retrieve(response.id).id == response.id
        time.sleep(retention_s)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="up", input="y", previous_response_id=response.id)
    assert ResponseStore(gw.storage_url).purge(_now()) == 1


def test_a_database_outage_serves_and_continues_responses_and_stores_them_later(
        upstreams: tuple, cluster: ThrowawayPostgres, tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], storage_url=cluster.url)
    with running_gateway(raw) as gw, gw.openai() as client:
        before = client.responses.create(model="up", input="before")
        cluster.stop("immediate")
        try:
            first = client.responses.create(model="up", input="during")
            second = client.responses.create(model="up", input="on", previous_response_id=first.id)
            assert sent(upstreams) == [user("during"), assistant(first.output_text), user("on")]
            assert client.responses.retrieve(second.id).output_text == second.output_text
            with gw.http() as http:  # what waits for the database shows in readiness
                waiting = wait_until(lambda: (w := http.get("/readyz").json()["writers"]["responses"])["last_error"]
                                     and w, timeout=30, what="the responses writer's failed attempt")
            assert waiting["buffered"] + waiting["spool_pending"] >= 2
            # What only the database has waits for it: a 503.
            with pytest.raises(openai.InternalServerError, match="stored responses are unavailable") as refused:
                client.responses.create(model="up", input="x", previous_response_id=before.id)
            assert refused.value.status_code == 503
        finally:
            cluster.start()
        # Back, before the writer has caught up: pending responses still continue.
        assert client.responses.create(model="up", input="x", previous_response_id=second.id).status == "completed"
        store = ResponseStore(cluster.url)
        wait_until(lambda: store.get(second.id, _now()) is not None, timeout=30, what="the writer's rows")
        assert store.get(first.id, _now())["response"]["output"][0]["content"][0]["text"] == first.output_text
        assert client.responses.create(model="up", input="x", previous_response_id=before.id).status == "completed"


def test_input_tokens_estimates_the_prompt_a_request_would_send(gw: Gateway, upstreams: tuple) -> None:
    """`client.responses.input_tokens.count`: after the chain or the conversation the request names, with
    its tools, calling nothing upstream and holding no conversation."""
    long_text = "word " * 400  # 2,000 characters: about 500 tokens at four characters a token
    with gw.openai() as client:
        first = client.responses.create(model="up", input=long_text)
        conversation = client.conversations.create(items=[{"role": "user", "content": long_text}])
        upstreams[0].reset()
        short = client.responses.input_tokens.count(model="up", input="hi")
        tooled = client.responses.input_tokens.count(model="up", input="hi", tools=[WEATHER])
        chained = client.responses.input_tokens.count(model="up", input="hi", previous_response_id=first.id)
        kept = client.responses.input_tokens.count(model="up", input="hi", conversation=conversation.id)
        client.responses.create(model="up", input="next", conversation=conversation.id)  # not held by the count
        with pytest.raises(openai.NotFoundError):
            client.responses.input_tokens.count(model="up", input="hi", previous_response_id="resp_nope")
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.input_tokens.count(model="up", input=[{"type": "bogus"}])
    assert short.object == "response.input_tokens" and 0 < short.input_tokens < 5
    assert tooled.input_tokens > short.input_tokens + 20  # the tool's definition counts
    assert 500 < chained.input_tokens - short.input_tokens < 520  # the first turn's input and its answer
    assert 495 < kept.input_tokens - short.input_tokens < 505
    assert bad.value.body["param"].startswith("input")  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 1  # the turn only
