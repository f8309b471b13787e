"""Compaction over a real socket with the openai SDK: `responses.compact` returns the conversation's user
messages and one compaction item, written by a pass the upstream sees as the conversation plus the
compaction instruction; sent back, the item stands for everything before it (the user's messages it
kept, the summary, and the unanswered tool results word for word); server-side compaction (`context_management`) compacts a
turn past its threshold before the model is called, whole and streamed, and the chain then goes on from
the compacted window; the pass is its own outcome row; a failed pass leaves the turn as it was; bad input
is a 400 naming its field; on Pitstop's engine, the engine's own count triggers it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from engine.tiny_model import make_tiny_model
from gateway.compaction import COMPACT_PROMPT
from gateway.compaction_items import SUMMARY_LEAD, decode
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

TOOL = {"type": "function", "name": "grep", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                            "required": ["q"]}}
HISTORY = [
    {"role": "user", "content": "find the bug in the parser"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "I will grep for it."}]},
    {"type": "function_call", "call_id": "call_1", "name": "grep", "arguments": '{"q": "parse"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "parser.py:12: def parse(" + " x" * 200},
    {"role": "user", "content": "also check the lexer"},
    {"type": "function_call", "call_id": "call_2", "name": "grep", "arguments": '{"q": "lex"}'},
    {"type": "function_call_output", "call_id": "call_2", "output": "lexer.py:3: def lex("},
]
SUMMARY = "from-a w1 w2 w3 w4"  # the mock's answer: 5 words, the first naming the instance


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("compaction")
    tiny = {"model_name": "tiny", "litellm_params": {"model": "pitstop-local/tiny", "model_dir": str(root / "tiny"),
                                                     "num_blocks": 256, "max_model_len": 512}}
    make_tiny_model(root / "tiny")
    models = [model_entry("up", upstream_processes[0].api_base), model_entry("cheap", upstream_processes[1].api_base),
              tiny]
    with running_gateway(gateway_config(root, models)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def gw_cheap(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Summaries written by another model than the turn's (`responses.compaction_model`)."""
    root = tmp_path_factory.mktemp("compaction-cheap")
    models = [model_entry("up", upstream_processes[0].api_base), model_entry("cheap", upstream_processes[1].api_base)]
    raw = gateway_config(root, models, responses={"compaction_model": "cheap", "compaction_max_tokens": 64},
                         auth={"require_keys": True, "master_key": "sk-master"})
    with running_gateway(raw) as gateway:
        yield gateway


def test_compact_returns_the_user_messages_and_one_item_that_stands_for_the_rest(gw: Gateway,
                                                                                 upstreams: tuple) -> None:
    with gw.openai() as client:
        raw = client.responses.with_raw_response.compact(model="up", input=HISTORY, instructions="Be brief.")  # type: ignore[arg-type]
        compacted = raw.parse()
        pass_body = upstreams[0].stats()["bodies"][-1]
        assert compacted.object == "response.compaction" and compacted.id.startswith("resp_")
        assert [(item.type, getattr(item, "role", None)) for item in compacted.output] == [
            ("message", "user"), ("message", "user"), ("compaction", None)]
        assert [item.content[0].text for item in compacted.output[:2]] == [  # type: ignore[union-attr]
            "find the bug in the parser", "also check the lexer"]
        # The pass: the conversation as the model sees it, then the instruction; the usage is the pass's.
        assert pass_body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert pass_body["messages"][-1] == {"role": "user", "content": COMPACT_PROMPT}
        assert len(pass_body["messages"]) == 1 + 6 + 1  # two calls after their text, two results, two users
        assert compacted.usage.output_tokens == 5  # type: ignore[union-attr]
        item = compacted.output[-1].model_dump()
        kept = decode(item["encrypted_content"], "output")
        assert kept.summary == SUMMARY and kept.model == "up"
        assert [m["role"] for m in kept.tail] == ["assistant", "tool"]  # the unanswered result, with its call
        # The window goes on: the model sees the user's words, the summary and the tail, nothing else.
        client.responses.create(model="up", input=[*raw.http_response.json()["output"],  # as the client got them
                                                   {"role": "user", "content": "go on"}])
    sent = upstreams[0].stats()["bodies"][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user", "user", "assistant", "tool", "user"]
    assert sent[2]["content"] == SUMMARY_LEAD + SUMMARY and sent[4]["content"] == "lexer.py:3: def lex("
    assert sent[3]["tool_calls"][0]["id"] == "call_2"
    # The pass is the request: its outcome row, its id, its headers.
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert row["status"] == "ok" and row["model"] == "up" and row["extra"]["compaction_of"] == "compact"
    assert compacted.id == "resp_" + row["request_id"].removeprefix("req-") and raw.headers["x-pitstop-model"] == "up"


def test_the_item_stands_for_everything_before_it_whatever_the_client_sends(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        compacted = client.responses.compact(model="up", input=HISTORY)  # type: ignore[arg-type]
        item = compacted.output[-1].model_dump(exclude_none=True)
        client.responses.create(model="up", input=[*HISTORY, item, {"role": "user", "content": "go on"}])  # type: ignore[list-item]
        everything = upstreams[0].stats()["bodies"][-1]["messages"]
        client.responses.create(model="up", input=[item, {"role": "user", "content": "go on"}])  # type: ignore[list-item]
        alone = upstreams[0].stats()["bodies"][-1]["messages"]
    assert [m["role"] for m in everything] == ["user", "user", "user", "assistant", "tool", "user"]
    assert everything == alone  # the item brings the user's words it kept


def test_compact_continues_a_stored_chain(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        previous = None
        for i in range(3):
            previous = client.responses.create(model="up", input=f"question {i}", previous_response_id=previous).id
        compacted = client.responses.compact(model="up", previous_response_id=previous)
        assert [item.content[0].text for item in compacted.output[:-1]] == [  # type: ignore[union-attr]
            "question 0", "question 1", "question 2"]
        assert compacted.output[-1].type == "compaction"
        # With new input too: it is part of what is compacted.
        more = client.responses.compact(model="up", previous_response_id=previous, input="question 3")
        assert len(more.output) == 5
    assert upstreams[0].stats()["bodies"][-1]["messages"][-2]["content"] == "question 3"


def test_server_side_compaction_compacts_a_turn_past_its_threshold(gw: Gateway, upstreams: tuple) -> None:
    """A long tool result grows the chain past the threshold; the next turn is compacted first (the user's
    words are kept, so they alone must fit under it), and the chain then goes on from the compacted window."""
    manage = [{"type": "compaction", "compact_threshold": 200}]
    with gw.openai() as client:
        asked = client.responses.create(model="up", input="[tools:1] find the bug", tools=[TOOL],  # type: ignore[list-item]
                                        context_management=manage)  # type: ignore[arg-type]
        call = asked.output[0]
        assert call.type == "function_call" and upstreams[0].stats()["requests"] == 1
        answered = client.responses.create(model="up", previous_response_id=asked.id, tools=[TOOL],  # type: ignore[list-item]
                                           input=[{"type": "function_call_output", "call_id": call.call_id,
                                                   "output": "parser.py " * 300}])
        grown = client.responses.with_raw_response.create(model="up", previous_response_id=answered.id, input="and?",
                                                          context_management=manage)  # type: ignore[arg-type]
        response = grown.parse()
        bodies = upstreams[0].stats()["bodies"]
        assert len(bodies) == 4  # the first two turns, the pass, then the turn
        assert bodies[2]["messages"][-1]["content"] == COMPACT_PROMPT and "tools" not in bodies[2]
        assert bodies[2]["messages"][:-1] == bodies[1]["messages"] + [  # what the model computed last, and more
            {"role": "assistant", "content": "from-a w1 w2 w3 w4"}, {"role": "user", "content": "and?"}]
        sent = bodies[3]["messages"]
        assert [m["content"] for m in sent] == ["[tools:1] find the bug", "and?", SUMMARY_LEAD + SUMMARY]
        assert [item.type for item in response.output] == ["compaction", "message"]
        assert response.output[0].id.startswith("cmp_")
        assert int(grown.headers["x-pitstop-compacted-messages"]) == 3  # the call, its result, the answer
        after = client.responses.create(model="up", previous_response_id=response.id, input="more?",
                                        context_management=manage)  # type: ignore[arg-type]
        assert [item.type for item in after.output] == ["message"] and upstreams[0].stats()["requests"] == 5
    sent = upstreams[0].stats()["bodies"][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "user", "user", "assistant", "user"]
    assert sent[:3] == bodies[3]["messages"]  # the compacted window's prefix, unchanged
    extra = gw.row(grown.headers["x-pitstop-request-id"])["extra"]["compaction"]
    assert extra["threshold"] == 200 and extra["prompt_tokens"] > 200 and extra["summariser"] == "up"
    assert gw.row(extra["pass_request_id"])["extra"]["compaction_of"] == grown.headers["x-pitstop-request-id"]


def test_a_streamed_turn_opens_with_the_compaction_item(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        stream = client.responses.create(model="up", input="read: " + "words " * 300, stream=True,
                                         context_management=[{"type": "compaction", "compact_threshold": 100}])  # type: ignore[arg-type]
        events = list(stream)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.type == "compaction" and added[0].output_index == 0
    assert added[1].item.type == "message" and added[1].output_index == 1
    done = events[-1]
    assert done.type == "response.completed"
    assert [item.type for item in done.response.output] == ["compaction", "message"]
    assert decode(done.response.output[0].encrypted_content, "output").summary == SUMMARY  # type: ignore[union-attr]
    assert upstreams[0].stats()["requests"] == 2


def test_stateless_chaining_appends_the_output_and_is_not_compacted_again(gw: Gateway, upstreams: tuple) -> None:
    manage = [{"type": "compaction", "compact_threshold": 250}]
    history: list = [{"role": "user", "content": "task"},
                     {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hmm " * 300}]},
                     *HISTORY[5:7]]
    with gw.openai() as client:
        response = client.responses.create(model="up", input=history, tools=[TOOL], context_management=manage)  # type: ignore[arg-type,list-item]
        assert response.output[0].type == "compaction"
        history += [item.model_dump(exclude_none=True) for item in response.output]
        history.append({"type": "function_call_output", "call_id": response.output[-1].call_id, "output": "ok"})  # type: ignore[union-attr]
        client.responses.create(model="up", input=history, tools=[TOOL], context_management=manage)  # type: ignore[arg-type,list-item]
    bodies = upstreams[0].stats()["bodies"]
    assert len(bodies) == 3  # one pass, two turns
    assert bodies[0]["tool_choice"] == "none" and bodies[0]["tools"] == bodies[1]["tools"]  # the same prefix
    second = bodies[2]["messages"]
    assert [m["role"] for m in second] == ["user", "user", "assistant", "tool", "assistant", "tool"]
    assert second[3]["content"] == "lexer.py:3: def lex("  # the result the pass found unanswered, kept


def test_a_failed_pass_leaves_the_turn_as_it_was(gw_cheap: Gateway, upstreams: tuple) -> None:
    upstreams[1].set_fail(500)
    with gw_cheap.openai("sk-master") as client:
        served = client.responses.with_raw_response.create(
            model="up", input="read: " + "words " * 300,
            context_management=[{"type": "compaction", "compact_threshold": 100}])  # type: ignore[arg-type]
        assert [item.type for item in served.parse().output] == ["message"]
        assert "x-pitstop-compacted-messages" not in served.headers
        with pytest.raises(openai.InternalServerError, match="compaction pass on 'cheap' failed"):
            client.responses.compact(model="up", input="read: " + "words " * 300)
    assert "failed" in gw_cheap.row(served.headers["x-pitstop-request-id"])["extra"]["compaction"]
    upstreams[1].set_fail(None)


def test_the_configured_model_writes_the_summary(gw_cheap: Gateway, upstreams: tuple) -> None:
    with gw_cheap.openai("sk-master") as client:
        compacted = client.responses.compact(model="up", input="read: " + "words " * 30)
    pass_body = upstreams[1].stats()["bodies"][-1]
    assert pass_body["model"] == "cheap" and pass_body["max_tokens"] == 64
    assert decode(compacted.output[-1].encrypted_content, "output").summary.startswith("from-b")  # type: ignore[union-attr]
    assert upstreams[0].stats()["requests"] == 0


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hi"}, "model"),
    ({"model": "up"}, "input"),
    ({"model": "up", "input": "hi", "tools": []}, "tools"),
    ({"model": "up", "input": [{"type": "compaction", "encrypted_content": "gAAAA-openai"}]},
     "input[0].encrypted_content"),
    ({"model": "up", "previous_response_id": "resp_nope"}, "previous_response_id"),
])
def test_a_bad_compact_request_is_a_4xx_naming_its_field(gw: Gateway, upstreams: tuple, body: dict,
                                                         param: str) -> None:
    with gw.http() as http:
        answer = http.post("/v1/responses/compact", json=body)
    assert 400 <= answer.status_code < 500 and answer.json()["error"]["param"] == param
    assert upstreams[0].stats()["requests"] == 0


@pytest.mark.parametrize(("manage", "param"), [
    ({"type": "compaction"}, "context_management"),
    ([{"type": "compaction", "compact_threshold": -5}], "context_management[0].compact_threshold"),
    ([{"type": "summarise"}], "context_management[0].type"),
])
def test_a_bad_context_management_is_a_400(gw: Gateway, upstreams: tuple, manage: object, param: str) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="up", input="hi", context_management=manage)  # type: ignore[arg-type]
    assert refused.value.body["param"] == param  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 0


def test_on_pitstops_engine_its_own_count_triggers_compaction(gw: Gateway) -> None:
    """No threshold given: 80% of the tiny model's 512-token window, counted by the engine."""
    text = "a few words about the sea and the harbour " * 3
    manage = [{"type": "compaction"}]
    with gw.openai() as client:
        previous, outputs = None, []
        for i in range(12):
            response = client.responses.create(model="tiny", input=f"{i}: {text}", max_output_tokens=8,
                                               previous_response_id=previous, context_management=manage)  # type: ignore[arg-type]
            previous = response.id
            outputs.append([item.type for item in response.output])
            assert response.usage is not None and response.usage.input_tokens <= 512
    compactions = [i for i, types in enumerate(outputs) if types[0] == "compaction"]
    assert compactions, outputs  # the chain grew past 409 tokens at least once, and went on
    assert all(types[-1] == "message" for types in outputs)



def test_a_conversation_keeps_the_compaction_item_and_goes_on_from_it(gw: Gateway, upstreams: tuple) -> None:
    manage = [{"type": "compaction", "compact_threshold": 100}]
    with gw.openai() as client:
        conversation = client.conversations.create(items=[  # type: ignore[list-item]
            {"role": "user", "content": "task"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hmm " * 200}]}])
        response = client.responses.create(model="up", conversation=conversation.id, input="next",
                                           context_management=manage)  # type: ignore[arg-type]
        assert [item.type for item in response.output] == ["compaction", "message"]
        items = list(client.conversations.items.list(conversation.id, order="asc"))
        assert [item.type for item in items] == ["message", "message", "message", "compaction", "message"]
        client.responses.create(model="up", conversation=conversation.id, input="more", context_management=manage)  # type: ignore[arg-type]
        stored = client.responses.retrieve(response.id)
    assert [item.type for item in stored.output] == ["compaction", "message"]
    assert upstreams[0].stats()["requests"] == 3  # one pass, two turns
    sent = upstreams[0].stats()["bodies"][-1]["messages"]
    assert [m["content"][:4] for m in sent] == ["task", "next", SUMMARY_LEAD[:4], "from", "more"]
