"""POST /v1/responses (OpenAI's Responses API, served as a chat) over a real socket with the openai SDK:
text and function calls, whole and streamed, a tool result sent back, route groups, the outcome row,
and a 400 naming the field for what the gateway cannot serve. Stored responses and `previous_response_id`:
test_gateway_stored_responses.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, read_feedback, running_gateway
from tests.gateway.upstream import UpstreamProcess

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [model_entry("up", a.api_base), model_entry("up-vllm", b.api_base, provider="hosted_vllm")]
    groups = [{"name": "grp", "models": ["up", "up-vllm"], "router": "tier-prior", "cost_preference": 0.0}]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("responses"), models, groups)) as gateway:
        yield gateway


@pytest.mark.parametrize("model", ["up", "up-vllm", "grp"])
def test_text_answer_with_instructions(gw: Gateway, upstreams: tuple, model: str) -> None:
    with gw.openai() as client:
        raw = client.responses.with_raw_response.create(model=model, input="one two three",
                                                        instructions="answer briefly", max_output_tokens=50)
    response = raw.parse()
    assert response.status == "completed" and response.object == "response" and response.id.startswith("resp_")
    assert response.output_text.startswith("from-") and len(response.output_text.split()) == 5
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + 5
    served_by = upstreams[0] if response.output_text.startswith("from-a") else upstreams[1]
    sent = served_by.stats()["bodies"][-1]
    assert sent["messages"] == [{"role": "system", "content": "answer briefly"},
                                {"role": "user", "content": "one two three"}]
    assert sent["max_tokens"] == 50 and "input" not in sent and "instructions" not in sent
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["completion"]) == ("responses", "ok", response.output_text)
    assert row["route_group"] == ("grp" if model == "grp" else None)


def test_a_function_call_and_its_result_round_trip(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        first = client.responses.create(model="up", input="weather in Oslo", tools=[WEATHER])
        call = first.output[0]
        assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
        assert json.loads(call.arguments) == {"q": "weather in Oslo"}
        follow_up = [{"role": "user", "content": "weather in Oslo"}, call.model_dump(exclude_none=True),
                     {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
        second = client.responses.create(model="up", input=follow_up, tools=[WEATHER], tool_choice="none")
    assert second.output[0].type == "message" and second.output_text.startswith("from-a")
    sent = upstreams[0].stats()["bodies"][-1]
    assert sent["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}]}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert sent["tool_choice"] == "none"


PATCH = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to the repository",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /[a-z ]+/"}}


@pytest.mark.parametrize("model", ["up", "up-vllm"])  # a Pitstop engine, and vLLM through litellm
def test_a_custom_tool_takes_free_text_and_its_call_round_trips(gw: Gateway, upstreams: tuple, model: str) -> None:
    """Codex's kind of tool: a chat custom tool to Pitstop's engines, which hold its input to its grammar;
    to other upstreams a function with one string argument; free text to the client either way."""
    native = model == "up"
    upstream = upstreams[0 if native else 1]
    with gw.openai() as client:
        first = client.responses.create(model=model, input="fix the bug", tools=[PATCH, WEATHER])
        call = first.output[0]
        assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input == "fix the bug"
        tool = upstream.stats()["bodies"][-1]["tools"][0]
        follow_up = [{"role": "user", "content": "fix the bug"}, call.model_dump(exclude_none=True),
                     {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "applied"}]
        second = client.responses.create(model=model, input=follow_up, tools=[PATCH],
                                         tool_choice={"type": "custom", "name": "apply_patch"})
        with client.responses.stream(model=model, input="and the next one", tools=[PATCH]) as stream:
            events = list(stream)
            streamed = stream.get_final_response()
    sent = upstream.stats()["bodies"][-2]
    if native:
        assert tool == {"type": "custom", "custom": {"name": "apply_patch", "description": PATCH["description"],
                                                     "format": {"type": "grammar", "grammar": {
                                                         "syntax": "lark", "definition": "start: /[a-z ]+/"}}}}
        assert sent["messages"][1]["tool_calls"] == [
            {"id": call.call_id, "type": "custom", "custom": {"name": "apply_patch", "input": "fix the bug"}}]
        assert sent["tool_choice"] == {"type": "custom", "custom": {"name": "apply_patch"}}
    else:
        assert tool["function"]["parameters"]["required"] == ["input"]
        assert "start: /[a-z ]+/" in tool["function"]["description"]
        assert sent["messages"][1]["tool_calls"] == [
            {"id": call.call_id, "type": "function", "function": {"name": "apply_patch",
                                                                   "arguments": json.dumps({"input": "fix the bug"})}}]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "applied"}
    assert second.output[0].type == "custom_tool_call"
    kinds = [event.type for event in events]
    pieces = [event.delta for event in events if event.type == "response.custom_tool_call_input.delta"]
    assert "response.custom_tool_call_input.done" in kinds and "response.function_call_arguments.delta" not in kinds
    assert "".join(pieces) == "and the next one" and len(pieces) == (2 if native else 1)  # as the upstream streams it
    assert streamed.output[0].type == "custom_tool_call" and streamed.output[0].input == "and the next one"


def test_allowed_tools_reach_a_pitstop_engine_as_they_are_and_others_as_fewer_tools(gw: Gateway,
                                                                                     upstreams: tuple) -> None:
    """OpenAI's allowed_tools (the prompt keeps every tool, so its cached prefix stays): Pitstop's engines
    take it as it is; an upstream without it is offered only the allowed tools, the mode as tool_choice."""
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "custom", "name": "apply_patch"}]}
    with gw.openai() as client:
        for model in ("up", "up-vllm"):
            client.responses.create(model=model, input="fix it", tools=[WEATHER, PATCH], tool_choice=choice)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="up-vllm", input="x", tools=[WEATHER], tool_choice={  # type: ignore[arg-type]
                "type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "nope"}]})
    native, other = upstreams[0].stats()["bodies"][-1], upstreams[1].stats()["bodies"][-1]
    assert native["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "custom", "custom": {"name": "apply_patch"}}]}}
    assert [t["type"] for t in native["tools"]] == ["function", "custom"]
    assert other["tool_choice"] == "required" and [t["function"]["name"] for t in other["tools"]] == ["apply_patch"]
    assert refused.value.body["param"] == "tool_choice"  # type: ignore[index]


def test_a_chat_clients_custom_tools_reach_any_upstream(gw: Gateway, upstreams: tuple) -> None:
    """Chat Completions' own custom tools: as they are to a Pitstop engine, as functions to vLLM, and the
    calls come back as custom calls from both, whole and streamed."""
    tool = {"type": "custom", "custom": {"name": "apply_patch", "format": {"type": "text"}}}
    with gw.openai() as client:
        for model in ("up", "up-vllm"):
            whole = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "patch it"}],
                                                   tools=[tool])  # type: ignore[list-item]
            chunks = list(client.chat.completions.create(model=model, stream=True, tools=[tool],  # type: ignore[list-item]
                                                         messages=[{"role": "user", "content": "and this"}]))
            calls = whole.choices[0].message.tool_calls or []
            assert [(c.type, c.custom.name, c.custom.input) for c in calls] == [  # type: ignore[union-attr]
                ("custom", "apply_patch", "patch it")]
            deltas = [d.model_dump() for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
            assert {d["type"] for d in deltas if d.get("type")} == {"custom"}
            assert "".join(d["custom"]["input"] for d in deltas) == "and this"
    assert upstreams[0].stats()["bodies"][-1]["tools"] == [tool]
    assert upstreams[1].stats()["bodies"][-1]["tools"][0]["type"] == "function"


def test_a_codex_shaped_turn_is_served_as_one_session(gw: Gateway, upstreams: tuple) -> None:
    """The body Codex CLI sends (codex-rs ResponsesApiRequest: reasoning items with encrypted content,
    a shell function and the apply_patch custom tool, store false, `include`, `text.verbosity`), streamed;
    its `prompt_cache_key` names the session."""
    shell = {"type": "function", "name": "shell", "description": "Run a command", "strict": False,
             "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                            "required": ["command"], "additionalProperties": False}}
    body = {"model": "up", "instructions": "You are a coding agent.", "tools": [shell, PATCH], "tool_choice": "auto",
            "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"}, "store": False,
            "stream": True, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "codex-session-1",
            "text": {"verbosity": "low"}, "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the tests"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA..."},
                {"type": "function_call", "id": "fc_1", "name": "shell", "call_id": "call_1",
                 "arguments": '{"command": ["pytest"]}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "1 failed"},
                {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "apply_patch",
                 "input": "*** Begin Patch"},
                {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Success"}]}
    with gw.http() as http:
        response = http.post("/v1/responses", json=body)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert response.status_code == 200 and events[-1]["type"] == "response.completed"
    call = events[-1]["response"]["output"][0]
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == {"command": "fix the tests"}
    sent = upstreams[0].stats()["bodies"][-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert sent["reasoning_effort"] == "medium" and sent["parallel_tool_calls"] is False
    assert gw.row(response.headers["x-pitstop-request-id"])["session_id"] == "codex-session-1"


@pytest.mark.parametrize("model", ["up", "up-vllm"])  # direct, and through litellm
def test_a_reasoning_models_thinking_comes_back_as_a_reasoning_item(gw: Gateway, upstreams: tuple, model: str) -> None:
    """vLLM's reasoning parsers (and DeepSeek's API) put a model's thinking in `reasoning_content`: it comes
    back as a `reasoning` item before the answer, whole and streamed, and is not sent back upstream."""
    with gw.openai() as client:
        whole = client.responses.create(model=model, input="[think:3] why?")
        with client.responses.stream(model=model, input="[think:2] and?") as stream:
            events = list(stream)
            streamed = stream.get_final_response()
        client.responses.create(model=model, input="more", previous_response_id=whole.id)
    reasoning, message = whole.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert [c.text for c in reasoning.content or []] == ["thought1 thought2 thought3"]
    assert whole.output_text.startswith("from-")
    deltas = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert deltas == ["thought1", " thought2"] and events[-1].type == "response.completed"
    assert [item.type for item in streamed.output] == ["reasoning", "message"]
    assert [c.text for c in streamed.output[0].content or []] == ["thought1 thought2"]  # type: ignore[union-attr]
    upstream = upstreams[0] if model == "up" else upstreams[1]
    assert upstream.stats()["bodies"][-1]["messages"] == [
        {"role": "user", "content": "[think:3] why?"}, {"role": "assistant", "content": whole.output_text},
        {"role": "user", "content": "more"}]


def test_streamed_text_arrives_as_response_events(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, client.responses.stream(model="up", input="[words:8] go") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text and len(final.output_text.split()) == 8
    assert final.usage is not None and final.usage.output_tokens == 8


def test_a_streamed_function_call(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, client.responses.stream(model="up", input="weather", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    call = final.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"q": "weather"}


def test_a_stream_that_breaks_ends_with_an_error_event_and_its_row(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        response = http.post("/v1/responses", json={"model": "up", "input": "[break:2] x", "stream": True})
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "error" and "stream broke" in events[-1]["message"]
    assert "response.completed" not in [e["type"] for e in events] and "[DONE]" not in response.text
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["status"] == "error" and row["endpoint"] == "responses"


@pytest.mark.parametrize("body, param", [
    ({"model": "up", "input": "x", "previous_response_id": 5}, "previous_response_id"),
    ({"model": "up", "input": "x", "store": "yes"}, "store"),
    ({"model": "up", "input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"model": "up", "input": "x", "conversation": {"name": "conv_1"}}, "conversation"),
    ({"model": "up", "input": "x", "temperatur": 1}, "temperatur"),
    ({"model": "up", "input": []}, "input"),
    ({"model": "up", "input": 5}, "input"),
    ({"model": "up", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "up", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "up", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]"),
    ({"model": "up", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"model": "up", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"model": "up", "input": "x", "tools": [{**PATCH, "format": {"type": "grammar", "syntax": "ebnf",
                                                                  "definition": "x"}}]}, "tools[0].format"),
    ({"model": "up", "input": [{"type": "custom_tool_call", "call_id": "c", "name": "n"}]}, "input[0].input"),
    ({"model": "up", "input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"model": "up", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"model": "up", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x"}, "model"),
])
def test_what_the_gateway_cannot_serve_is_a_400_naming_the_field(gw: Gateway, upstreams: tuple, body: dict,
                                                                  param: str) -> None:
    with gw.http() as http:
        response = http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert sum(u.stats()["requests"] for u in upstreams) == 0


def test_feedback_may_name_a_response_by_its_id(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client:
        raw = client.responses.with_raw_response.create(model="up", input="x")
    with gw.http() as http:
        accepted = http.post("/v1/feedback", json={"request_id": raw.parse().id, "value": 1.0})
    assert accepted.status_code == 202
    gw.flush()
    assert {f["request_id"] for f in read_feedback(gw.storage_url)} >= {raw.headers["x-pitstop-request-id"]}
