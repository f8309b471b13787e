"""The Conversations API over a real socket with the openai SDK: a Responses turn in a `conversation` is
served after its items and adds its own (whole and streamed, text and function calls), a conversation
is one agent session from its first turn, its items are created, listed, read and deleted, it belongs to
its key, bad input is a clear 4xx, and a database outage is a 503 before any upstream call."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from storage.conversations import ConversationStore
from storage.keys import KeyStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_responses import WEATHER
from tests.gateway.test_gateway_stored_responses import assistant, sent, user
from tests.gateway.upstream import UpstreamProcess
from tests.storage.pg_cluster import ThrowawayPostgres


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    raw = gateway_config(tmp_path_factory.mktemp("conversations"), [model_entry("up", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


def _request_id(response_id: str) -> str:
    return "req-" + response_id.removeprefix("resp_")


def test_turns_in_a_conversation_continue_it_and_add_to_it(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        conversation = client.conversations.create(
            items=[{"role": "developer", "content": "answer briefly"}, {"role": "user", "content": "one"}],
            metadata={"topic": "counting"})
        first = client.responses.create(model="up", conversation=conversation.id, input="two", instructions="be kind")
        # The conversation's items, after this request's instructions (as with previous_response_id).
        assert sent(upstreams) == [{"role": "system", "content": "be kind"}, {"role": "developer",
                                   "content": "answer briefly"}, user("one"), user("two")]
        second = client.responses.create(model="up", conversation={"id": conversation.id},
                                         input=[{"role": "user", "content": [{"type": "input_text", "text": "three"}]}])
        assert sent(upstreams) == [{"role": "developer", "content": "answer briefly"}, user("one"), user("two"),
                                   assistant(first.output_text),
                                   {"role": "user", "content": [{"type": "text", "text": "three"}]}]
        items = list(client.conversations.items.list(conversation.id, order="asc", limit=2))  # three pages
        retrieved = client.conversations.retrieve(conversation.id)
    assert first.conversation is not None and first.conversation.id == conversation.id
    assert second.conversation is not None and second.previous_response_id is None
    assert [(i.type, i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr]
        ("message", "developer", "answer briefly"), ("message", "user", "one"), ("message", "user", "two"),
        ("message", "assistant", first.output_text), ("message", "user", "three"),
        ("message", "assistant", second.output_text)]
    assert items[3].id == first.output[0].id and len({i.id for i in items}) == 6
    assert retrieved.model_dump() == conversation.model_dump()
    assert retrieved.metadata == {"topic": "counting"} and conversation.id.startswith("conv_")
    # A conversation is one session from its first turn: it is named before any turn is served.
    rows = [gw.row(_request_id(r.id)) for r in (first, second)]
    assert [r["session_id"] for r in rows] == [conversation.id, conversation.id]
    assert [r["turn"] for r in rows] == [1, 2]


def test_an_agent_in_a_conversation_answers_its_calls_as_one_session(gw: Gateway, upstreams: tuple) -> None:
    """The Agents SDK's way: every turn names the conversation and sends only what is new."""
    with gw.openai() as client:
        conversation = client.conversations.create()
        turn = client.responses.create(model="up", conversation=conversation.id, input="weather in Oslo",
                                       tools=[WEATHER])
        calls = []
        for _ in range(2):
            call = turn.output[0]
            assert call.type == "function_call"
            calls.append(call)
            time.sleep(0.3)  # the tool runs
            turn = client.responses.create(
                model="up", conversation=conversation.id, tools=[WEATHER],
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        kinds = [item.type for item in client.conversations.items.list(conversation.id, order="asc")]
    assert sent(upstreams) == [user("weather in Oslo"), *[
        message for call in calls for message in (
            {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"})]]
    assert kinds == ["message", "function_call", "function_call_output", "function_call", "function_call_output",
                     "function_call"]
    with gw.http() as http:
        session = http.get(f"/v1/sessions/{conversation.id}")
    assert session.status_code == 200 and session.json()["turns"] == 3
    last = gw.row(_request_id(turn.id))
    assert last["session_id"] == conversation.id and last["extra"]["tool_wait_s"] >= 0.3


def test_a_streamed_turn_adds_its_items_before_its_completed_event(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        conversation = client.conversations.create()
    with gw.http() as http:
        streamed = http.post("/v1/responses", json={"model": "up", "input": "[words:3] go", "stream": True,
                                                    "conversation": conversation.id})
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
        listed = http.get(f"/v1/conversations/{conversation.id}/items?order=asc").json()
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed" and final["conversation"] == {"id": conversation.id}
    assert [item["id"] for item in listed["data"]][1:] == [final["output"][0]["id"]]
    assert listed["data"][1]["content"][0]["text"] == final["output"][0]["content"][0]["text"]


def test_a_turn_sent_while_another_runs_in_its_conversation_is_a_400_conversation_locked(
        gw: Gateway, upstreams: tuple) -> None:
    """As at OpenAI: one response at a time in a conversation. Two turns that overlapped would each be
    served without the other and both be added, forking the agent's history; the one refused adds nothing."""
    with gw.openai() as client, ThreadPoolExecutor(1) as pool:
        conversation = client.conversations.create()
        other = client.conversations.create()
        running = pool.submit(client.responses.create, model="up", conversation=conversation.id,
                              input="[delay:1.5] first")
        wait_until(lambda: upstreams[0].stats()["requests"] >= 1, what="the first turn upstream")
        refusals = []
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError, match="one response at a time") as refused:
                client.responses.create(model="up", conversation=conversation.id, input="meanwhile", stream=stream)
            refusals.append(refused.value)
        beside = client.responses.create(model="up", conversation=other.id, input="elsewhere")  # not held up
        first = running.result()
        second = client.responses.create(model="up", conversation=conversation.id, input="second")  # at once
        items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert [(r.status_code, r.body["code"], r.body["param"]) for r in refusals] == [  # type: ignore[index]
        (400, "conversation_locked", "conversation")] * 2
    assert [item.id for item in items][1::2] == [first.output[0].id, second.output[0].id]
    assert [item.content[0].text for item in items][::2] == ["[delay:1.5] first", "second"]  # type: ignore[union-attr]
    assert beside.output_text and upstreams[0].stats()["requests"] == 3  # the refused turns never went upstream


@pytest.mark.parametrize("how", ["fails", "breaks mid-stream", "client leaves mid-stream"])
def test_a_turn_that_fails_or_is_left_gives_its_conversation_back_at_once(gw: Gateway, how: str) -> None:
    with gw.openai() as client:
        conversation = client.conversations.create()
    body = {"model": "up", "conversation": conversation.id, "stream": how != "fails",
            "input": {"fails": "[fail:500]", "breaks mid-stream": "[words:50] [break:2]",
                      "client leaves mid-stream": "[words:400] x"}[how]}
    with gw.http() as http:
        if how == "client leaves mid-stream":
            with http.stream("POST", "/v1/responses", json=body) as streamed:
                next(streamed.iter_lines())
        else:
            http.post("/v1/responses", json=body)
    with gw.openai() as client:
        # The lease is given back when the turn ends, not when it runs out (15 s).
        deadline = time.monotonic() + 5.0
        while True:
            try:
                after = client.responses.create(model="up", conversation=conversation.id, input="after")
                break
            except openai.BadRequestError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert [item.id for item in items][-1] == after.output[0].id and len(items) == 2  # nothing of the failed turn


def test_store_false_keeps_the_turn_in_its_conversation_but_not_the_response(gw: Gateway) -> None:
    with gw.openai() as client:
        conversation = client.conversations.create()
        response = client.responses.create(model="up", conversation=conversation.id, input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        items = list(client.conversations.items.list(conversation.id))
    assert [item.type for item in items] == ["message", "message"] and items[0].id == response.output[0].id


def test_items_are_added_read_and_deleted(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        conversation = client.conversations.create(items=[{"role": "user", "content": "a"}])
        added = client.conversations.items.create(conversation.id, items=[
            {"type": "message", "role": "assistant", "content": "b"}, {"role": "user", "content": "c", "id": "mine"}])
        assert [i.content[0].text for i in added.data] == ["b", "c"]  # type: ignore[union-attr]
        assert added.first_id == added.data[0].id and added.last_id == added.data[1].id and not added.has_more
        assert "mine" not in {i.id for i in added.data}  # the gateway names its items
        one = client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
        assert one.model_dump() == added.data[0].model_dump()
        after_delete = client.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
        assert after_delete.id == conversation.id and after_delete.object == "conversation"
        with pytest.raises(openai.NotFoundError, match="no item"):
            client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
        client.responses.create(model="up", conversation=conversation.id, input="d")
        assert sent(upstreams) == [user("a"), user("c"), user("d")]
        updated = client.conversations.update(conversation.id, metadata={"k": "v"})
        assert updated.metadata == {"k": "v"} and client.conversations.retrieve(conversation.id).metadata == {"k": "v"}
        deleted = client.conversations.delete(conversation.id)
        assert deleted.deleted and deleted.id == conversation.id and deleted.object == "conversation.deleted"
        requests = upstreams[0].stats()["requests"]
        for call in (lambda: client.conversations.retrieve(conversation.id),
                     lambda: client.conversations.items.list(conversation.id),
                     lambda: client.conversations.delete(conversation.id)):
            with pytest.raises(openai.NotFoundError, match="no conversation"):
                call()
        with pytest.raises(openai.NotFoundError) as refused:
            client.responses.create(model="up", conversation=conversation.id, input="e")
    assert refused.value.body["param"] == "conversation" and refused.value.body["code"] == "conversation_not_found"
    assert upstreams[0].stats()["requests"] == requests
    assert ConversationStore(gw.storage_url).with_items(conversation.id) == (None, [])


def test_conversations_belong_to_the_key_that_made_them(gw: Gateway) -> None:
    keys = KeyStore(gw.storage_url)
    (_, mine), (_, theirs) = keys.create("mine"), keys.create("theirs")
    with gw.openai(api_key=mine) as owner, gw.openai(api_key=theirs) as other, gw.openai() as anonymous:
        made = owner.conversations.create(items=[{"role": "user", "content": "secret plans"}])
        item_id = next(iter(owner.conversations.items.list(made.id))).id
        for client in (other, anonymous):
            for call in (lambda c=client: c.conversations.retrieve(made.id),
                         lambda c=client: c.conversations.update(made.id, metadata={}),
                         lambda c=client: c.conversations.delete(made.id),
                         lambda c=client: c.conversations.items.list(made.id),
                         lambda c=client: c.conversations.items.create(made.id, items=[{"role": "user", "content": "x"}]),
                         lambda c=client: c.conversations.items.retrieve(item_id, conversation_id=made.id),
                         lambda c=client: c.conversations.items.delete(item_id, conversation_id=made.id),
                         lambda c=client: c.responses.create(model="up", input="x", conversation=made.id)):
                with pytest.raises(openai.NotFoundError):
                    call()
        assert owner.responses.create(model="up", input="x", conversation=made.id).status == "completed"
        assert len(list(owner.conversations.items.list(made.id))) == 3


BAD_REQUESTS = [
    ("POST", "/v1/responses", {"model": "up", "input": "x", "conversation": "{conv}",
                               "previous_response_id": "resp_1"}, 400, "conversation"),
    ("POST", "/v1/responses", {"model": "up", "input": "x", "conversation": 5}, 400, "conversation"),
    ("POST", "/v1/responses", {"model": "up", "input": "x", "conversation": {"id": "{conv}", "x": 1}}, 400,
     "conversation"),
    ("POST", "/v1/responses", {"model": "up", "input": "x", "prompt": {"id": "pmpt_1"}}, 400, "prompt"),
    ("POST", "/v1/responses", {"model": "up", "input": "x", "conversation": "conv_nope"}, 404, "conversation"),
    ("POST", "/v1/conversations", [], 400, None),
    ("POST", "/v1/conversations", {"items": [{"role": "user", "content": "x"}] * 21}, 400, "items"),
    ("POST", "/v1/conversations", {"items": [{"role": "user", "content": "x"}, {"type": "web_search_call"}]}, 400,
     "items[1].type"),
    ("POST", "/v1/conversations", {"items": [{"role": "robot", "content": "x"}]}, 400, "items[0].role"),
    ("POST", "/v1/conversations", {"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ("POST", "/v1/conversations", {"metadata": {"k": 1}}, 400, "metadata"),
    ("POST", "/v1/conversations", {"items": [], "title": "x"}, 400, "title"),
    ("POST", "/v1/conversations/{conv}", {}, 400, "metadata"),
    ("POST", "/v1/conversations/{conv}/items", {"items": []}, 400, "items"),
    ("POST", "/v1/conversations/{conv}/items", {"item": {}}, 400, "items"),
    ("GET", "/v1/conversations/{conv}/items?limit=0", None, 400, "limit"),
    ("GET", "/v1/conversations/{conv}/items?order=up", None, 400, "order"),
    ("GET", "/v1/conversations/{conv}/items?after=msg_nope", None, 400, "after"),
    ("GET", "/v1/conversations/{conv}/items/msg_nope", None, 404, "item_id"),
    ("DELETE", "/v1/conversations/{conv}/items/msg_nope", None, 404, "item_id"),
    ("GET", "/v1/conversations/conv_nope", None, 404, None),
    ("POST", "/v1/conversations/conv_nope/items", {"items": [{"role": "user", "content": "x"}]}, 404, None),
]


@pytest.mark.parametrize("method, path, body, status, param", BAD_REQUESTS)
def test_bad_conversation_requests_are_clear_4xx(gw: Gateway, upstreams: tuple, method: str, path: str,
                                                 body: object, status: int, param: str | None) -> None:
    with gw.http() as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]
        filled = json.loads(json.dumps(body).replace("{conv}", conversation))
        response = http.request(method, path.format(conv=conversation), json=filled)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert upstreams[0].stats()["requests"] == 0


def test_a_gateway_that_stores_none_keeps_no_conversations(tmp_path: Path, upstreams: tuple) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], responses={"store": False})
    with running_gateway(raw) as gw, gw.openai() as client:
        with pytest.raises(openai.BadRequestError, match="keeps no conversations"):
            client.conversations.create()
        with pytest.raises(openai.BadRequestError, match="keeps no conversations") as refused:
            client.responses.create(model="up", input="x", conversation="conv_1")
    assert refused.value.body["param"] == "conversation"
    assert upstreams[0].stats()["requests"] == 0


def test_a_database_outage_is_a_503_before_any_upstream_call(
        upstreams: tuple, cluster: ThrowawayPostgres, tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)], storage_url=cluster.url)
    with running_gateway(raw) as gw, gw.openai() as client:
        conversation = client.conversations.create(items=[{"role": "user", "content": "before"}])
        cluster.stop("immediate")
        try:
            for call in (lambda: client.responses.create(model="up", input="x", conversation=conversation.id),
                         lambda: client.conversations.create(),
                         lambda: client.conversations.items.list(conversation.id),
                         lambda: client.conversations.items.create(conversation.id,
                                                                   items=[{"role": "user", "content": "x"}])):
                with pytest.raises(openai.InternalServerError, match="conversations are unavailable") as refused:
                    call()
                assert refused.value.status_code == 503
                assert refused.value.body["code"] == "conversation_store_unavailable"
            assert upstreams[0].stats()["requests"] == 0
        finally:
            cluster.start()
        client.responses.create(model="up", input="after", conversation=conversation.id)
        assert sent(upstreams) == [user("before"), user("after")]
