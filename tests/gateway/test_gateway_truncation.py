"""Responses' `truncation: "auto"` over a real socket with the openai SDK: a chain grown past the model's
context is served with items in its middle dropped (the instructions, the first user message and as
many of the latest as fit kept; a tool result never without its call), and the stored chain left whole;
fitted by the engine's own count (a tiny model on Pitstop's engine) or, where the upstream cannot
count, by a bound no tokenizer exceeds; a last exchange too long on its own is a 400; without it the
model refuses what does not fit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from engine.tiny_model import make_tiny_model
from gateway.truncation import byte_bound
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

WINDOW = 1000  # the mock upstream's model: max_input_tokens in its config
TINY_WINDOW = 256  # the tiny model's context (its max_model_len)
ANSWER = 16  # max_output_tokens: what is kept for the answer
TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                              "required": ["q"]}}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("truncation")
    up = model_entry("up", upstream_processes[0].api_base)
    up["model_info"]["max_input_tokens"] = WINDOW
    tiny = {"model_name": "tiny", "litellm_params": {"model": "pitstop-local/tiny", "model_dir": str(root / "tiny"),
                                                     "num_blocks": 256, "max_model_len": TINY_WINDOW}}
    make_tiny_model(root / "tiny")
    with running_gateway(gateway_config(root, [up, tiny])) as gateway:
        yield gateway


def chain(client: openai.OpenAI, model: str, turns: int, text: str, **extra: object) -> str:
    """`turns` turns chained by id, each `text` with its number; the last response's id."""
    previous = None
    for i in range(turns):
        previous = client.responses.create(model=model, input=f"{i}: {text}", instructions="Be brief.",
                                           max_output_tokens=ANSWER, previous_response_id=previous, **extra).id  # type: ignore[arg-type]
    assert previous is not None
    return previous


def test_the_middle_goes_until_the_chat_fits_and_the_stored_chain_stays_whole(gw: Gateway, upstreams: tuple) -> None:
    text = "tell me about the weather in Lisbon in the spring, in a few words " * 2
    with gw.openai() as client:
        last = chain(client, "up", 6, text)
        sent, cut_headers = [], []
        for i in range(5):  # the chain goes on, cut each turn
            cut = client.responses.with_raw_response.create(model="up", input=f"and now, {i}?", instructions="Be brief.",
                                                            max_output_tokens=ANSWER, previous_response_id=last,
                                                            truncation="auto")
            last = cut.parse().id
            sent.append(upstreams[0].stats()["bodies"][-1]["messages"])
            cut_headers.append(cut.headers)
        whole = client.responses.create(model="up", input="and?", instructions="Be brief.",
                                        max_output_tokens=ANSWER, previous_response_id=last)
    sent_whole = upstreams[0].stats()["bodies"][-1]["messages"]
    assert cut.parse().truncation == "auto" and whole.truncation == "disabled"
    assert len(sent_whole) == 1 + 11 * 2 + 1  # the stored chain is whole: the instructions, 11 turns, the input
    for messages, headers in zip(sent, cut_headers, strict=True):
        dropped = int(headers["x-pitstop-truncated-messages"])
        assert messages[:2] == sent_whole[:2]  # the instructions and the task stay
        assert messages[2:] == sent_whole[2 + dropped:len(messages) - 2 + 2 + dropped]  # the latest, in order
        assert byte_bound({"messages": messages}) <= WINDOW - ANSWER
        assert gw.row(headers["x-pitstop-request-id"])["extra"]["truncated_messages"] == dropped
    # The cut moves in strides, not every turn: most turns send the last turn's chat and then more, so the
    # model's prefix cache still holds it.
    extended = [later[:len(earlier)] == earlier for earlier, later in zip(sent, sent[1:], strict=False)]
    assert sum(extended) >= 2, [int(h["x-pitstop-truncated-messages"]) for h in cut_headers]
    with gw.http() as http:
        assert 'pitstop_truncated_requests_total{model="up"}' in http.get("/metrics").text


def test_a_tool_call_is_never_sent_without_its_result(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        previous = None
        for i in range(5):  # each turn: the model calls the tool, then answers with its result
            asked = client.responses.create(model="up", input=f"[tools:1] look up item {i} " + "x" * 80, tools=[TOOL],  # type: ignore[list-item]
                                            max_output_tokens=ANSWER, previous_response_id=previous)
            call = next(item for item in asked.output if item.type == "function_call")
            previous = client.responses.create(
                model="up", previous_response_id=asked.id, tools=[TOOL], max_output_tokens=ANSWER,  # type: ignore[list-item]
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "y" * 80}]).id
        cut = client.responses.with_raw_response.create(model="up", input="and?", previous_response_id=previous,
                                                        tools=[TOOL], max_output_tokens=ANSWER, truncation="auto")  # type: ignore[list-item]
    sent = upstreams[0].stats()["bodies"][-1]["messages"]
    assert int(cut.headers["x-pitstop-truncated-messages"]) > 0
    assert sent[0]["content"].startswith("[tools:1] look up item 0") and sent[1]["role"] != "tool"
    called = {c["id"] for m in sent if m["role"] == "assistant" for c in m.get("tool_calls") or ()}
    assert all(m["tool_call_id"] in called for m in sent if m["role"] == "tool")
    assert byte_bound({"messages": sent, "tools": upstreams[0].stats()["bodies"][-1]["tools"]}) <= WINDOW - ANSWER


def test_a_task_too_long_to_keep_goes_too_and_the_tail_opens_with_a_user_message(gw: Gateway,
                                                                                  upstreams: tuple) -> None:
    with gw.openai() as client:
        first = client.responses.create(model="up", input="T" * (WINDOW + 200), instructions="Be brief.",
                                        max_output_tokens=ANSWER)
        second = client.responses.create(model="up", input="short question", instructions="Be brief.",
                                         max_output_tokens=ANSWER, previous_response_id=first.id)
        cut = client.responses.with_raw_response.create(model="up", input="and?", instructions="Be brief.",
                                                        max_output_tokens=ANSWER, previous_response_id=second.id,
                                                        truncation="auto")
    sent = upstreams[0].stats()["bodies"][-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "short question" and cut.headers["x-pitstop-truncated-messages"] == "2"


def test_on_pitstops_engine_the_engines_count_fits_the_context(gw: Gateway) -> None:
    """The tiny model's context is 256 tokens: a long chain is refused whole, and served cut by the
    engine's own count."""
    text = "a few words about the sea and the harbour"
    with gw.openai() as client:
        last = chain(client, "tiny", 8, text, truncation="auto")
        with pytest.raises(openai.BadRequestError, match="tokens"):
            client.responses.create(model="tiny", input="more?", instructions="Be brief.", max_output_tokens=ANSWER,
                                    previous_response_id=last)
        cut = client.responses.with_raw_response.create(model="tiny", input="more?", instructions="Be brief.",
                                                        max_output_tokens=ANSWER, previous_response_id=last,
                                                        truncation="auto")
    served = cut.parse()
    assert served.usage is not None and served.usage.input_tokens <= TINY_WINDOW - ANSWER
    assert int(cut.headers["x-pitstop-truncated-messages"]) > 0


def test_a_last_exchange_too_long_on_its_own_is_a_400(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="up", input="z" * (2 * WINDOW), truncation="auto", max_output_tokens=ANSWER)
    assert refused.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    assert refused.value.body["param"] == "input"  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 0


def test_truncation_takes_auto_or_disabled(gw: Gateway) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="up", input="x", truncation="sometimes")  # type: ignore[arg-type]
    assert refused.value.body["param"] == "truncation"  # type: ignore[index]
    assert json.dumps(refused.value.body).count("auto") == 1  # type: ignore[arg-type]
