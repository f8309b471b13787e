"""The `hermes` (Qwen2.5, Qwen3, Hermes) and `llama3_json` (Llama 3.x) tool-call parsers: whole answers
parsed as vLLM's parsers parse them, any streaming of the same text gives the same content and calls (each call
going out as it is written: its name, then its arguments piece by piece), and the engine server
(`--tool-call-parser hermes`) answers a chat that offers tools with `tool_calls`, whole and streamed, over
a real socket with the openai SDK; behind the gateway, with a reasoning model's thinking, a Responses
client gets its reasoning item and its function call."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.async_engine import AsyncEngine
from engine.call_stream import CallStream
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.server.app import create_app
from engine.tokenizer import Tokenizer
from engine.tool_parsers import parse_calls
from tests.engine.fakes import ScriptedRunner
from tests.engine.serving import sdk, serve_in_thread

OSLO = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
BERGEN = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call>'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def calls_of(text: str, parser: str = "hermes") -> tuple[str | None, list[tuple[str, dict]]] | None:
    parsed = parse_calls(text, parser)
    if parsed is None:
        return None
    return parsed.content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.calls]


def test_whole_answers() -> None:
    assert calls_of("Let me look.\n" + OSLO) == ("Let me look.\n", [("get_weather", {"city": "Oslo"})])
    assert calls_of(OSLO + "\n" + BERGEN) == (None, [("get_weather", {"city": "Oslo"}),
                                                     ("get_weather", {"city": "Bergen"})])
    assert calls_of(OSLO.removesuffix("</tool_call>")) == (None, [("get_weather", {"city": "Oslo"})])  # cut at the end
    assert calls_of("No tools needed.") is None
    assert calls_of("<tool_call>\n{not json}\n</tool_call>") is None  # the whole answer stays text
    assert calls_of('<tool_call>\n{"arguments": {}}\n</tool_call>') is None  # no name
    parsed = parse_calls(OSLO)
    assert parsed is not None and parsed.calls[0]["id"].startswith("call_") and parsed.calls[0]["type"] == "function"


def test_llama3_json_answers() -> None:
    oslo, bergen = '{"name": "get_weather", "parameters": {"city": "Oslo"}}', '{"name": "f", "arguments": {}}'
    assert calls_of(oslo, "llama3_json") == (None, [("get_weather", {"city": "Oslo"})])
    assert calls_of(f"<|python_tag|>{oslo}; {bergen}", "llama3_json") == (
        None, [("get_weather", {"city": "Oslo"}), ("f", {})])
    assert calls_of(f"Sure: {oslo}", "llama3_json") is None  # text first: no call, as in vLLM
    assert calls_of('{"name": "f", "parameters": {}} and then', "llama3_json") is None
    assert calls_of('{"no": "name"}', "llama3_json") is None


pieces = st.sampled_from(["<tool_call>", "</tool_call>", "<tool", "_call>", '{"name": "f", "arguments": {}}',
                          '{"name": "g", "parameters": {"x": 1}}', "; ", "<|python_tag|>", "<|py", "{oops",
                          "text ", "\n", "<", "call>", "{"])


def joined(deltas: list[dict]) -> list[dict]:
    """The calls streamed deltas make, joined as a client joins them (by index)."""
    calls: dict[int, dict] = {}
    for delta in deltas:
        call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
        for key in ("name", "arguments"):
            call[key] += delta.get("function", {}).get(key) or ""
    assert sorted(calls) == list(range(len(calls)))  # numbered from 0, none skipped
    return [calls[k] for k in sorted(calls)]


def streamed(text: str, bounds: list[int], parser: str, max_calls: int | None = None) -> tuple[str, list[dict], CallStream]:
    stream = CallStream(parser, max_calls)
    content, deltas = "", []
    for a, b in zip(bounds, bounds[1:], strict=False):
        sent, calls = stream.feed(text[a:b])
        content, deltas = content + sent, deltas + calls
    rest = stream.finish()
    return content + (rest.content or ""), deltas + rest.calls, stream


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(pieces, max_size=10), cuts=st.lists(st.integers(0, 120), max_size=6),
       parser=st.sampled_from(["hermes", "llama3_json"]))
def test_streaming_gives_what_the_whole_answer_gives(parts: list[str], cuts: list[int], parser: str) -> None:
    """Whatever the cuts: an answer whose calls parse streams the same content and calls; one whose
    calls do not parse streams as text, unless a call had gone out before the part that does not parse."""
    text = "".join(parts)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    content, deltas, stream = streamed(text, bounds, parser)
    whole = parse_calls(text, parser)
    if whole is not None:
        assert content == (whole.content or "")
        assert [(c["name"], json.loads(c["arguments"])) for c in joined(deltas)] == [
            (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole.calls]
    elif not stream.called:
        assert content == text and deltas == []
    else:
        assert all(call["name"] for call in joined(deltas)) and text.startswith(content)


def test_a_call_goes_out_as_it_is_written() -> None:
    """Token by token: the call's id and name as soon as they are written, then its arguments in pieces
    that join into what the model wrote; `parallel_tool_calls: false` keeps the first call."""
    oslo = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "note": "a } in \\" a string"}}\n</tool_call>'
    text = "Let me look.\n" + oslo + "\n" + BERGEN
    stream = CallStream("hermes")
    seen = [stream.feed(char) for char in text]
    named_at = next(i for i, (_, calls) in enumerate(seen) if calls)
    assert text[:named_at + 1].endswith('"arguments": {')  # the name went out with the arguments' first character
    assert seen[named_at][1][0] == {"index": 0, "id": seen[named_at][1][0]["id"], "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""}}
    deltas = [delta for _, calls in seen for delta in calls] + stream.finish().calls
    assert joined(deltas)[0]["arguments"] == '{"city": "Oslo", "note": "a } in \\" a string"}'  # as written
    assert [json.loads(c["arguments"]) for c in joined(deltas)] == [{"city": "Oslo", "note": 'a } in " a string'},
                                                                   {"city": "Bergen"}]
    assert len([d for d in deltas if d["index"] == 0]) > 10  # piece by piece, not whole
    assert "".join(sent for sent, _ in seen) == "Let me look.\n"
    content, first_only, _ = streamed(text, list(range(len(text) + 1)), "hermes", max_calls=1)
    assert content == "Let me look.\n" and [c["name"] for c in joined(first_only)] == ["get_weather"]
    # Written arguments first, or as a JSON string: the call goes out whole once its object is complete.
    for odd in ('{"arguments": {"x": 1}, "name": "f"}', '{"name": "f", "arguments": "{\\"x\\": 1}"}'):
        _, deltas, _ = streamed(odd, list(range(len(odd) + 1)), "llama3_json")
        assert len(deltas) == 1 and json.loads(joined(deltas)[0]["arguments"]) == {"x": 1}


def _thinking_engine(model_dir: Path, answer: str) -> AsyncEngine:
    tokenizer = Tokenizer(model_dir)
    runner = ScriptedRunner(tokenizer.encode(answer), tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    return AsyncEngine(LLMEngine(EngineConfig(num_blocks=128, block_size=16, max_model_len=1024), runner,
                                 tokenizer=tokenizer))


def test_the_engine_server_answers_written_calls_as_tool_calls(tiny_model_dir: Path) -> None:
    messages = [{"role": "user", "content": "Weather in Oslo and Bergen?"}]
    engine = _thinking_engine(tiny_model_dir, "Let me look.\n" + OSLO + "\n" + BERGEN)
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="hermes")) as url, sdk(url) as client:
        whole = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=128)
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],
                                                     max_tokens=128, stream=True))
        without = client.chat.completions.create(model="tiny", messages=messages, max_tokens=128)
        declined = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],
                                                  tool_choice="none", max_tokens=128)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and message.content == "Let me look.\n"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []] == [
        ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Bergen"})]
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert "".join(d.delta.content or "" for d in deltas) == "Let me look.\n"
    pieces = [call.model_dump(exclude_none=True) for d in deltas for call in d.delta.tool_calls or []]
    assert [(c["name"], json.loads(c["arguments"])) for c in joined(pieces)] == [
        ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Bergen"})]
    assert len(pieces) > 4  # the arguments went out as they were written, not whole at the end
    assert deltas[-1].finish_reason == "tool_calls"
    # No tools offered, or declined: the text is the answer, as the model wrote it.
    for answer in (without, declined):
        assert answer.choices[0].message.tool_calls is None and OSLO in (answer.choices[0].message.content or "")


def test_an_answer_cut_inside_a_call_is_the_partial_call_whole_and_streamed(tiny_model_dir: Path) -> None:
    """max_tokens ends the answer inside a call's arguments: the whole answer gives the partial call as the
    stream sent it (not the call's markup as content), and both finish "length", as OpenAI's do."""
    answer = "Let me look.\n" + OSLO
    tokenizer = Tokenizer(tiny_model_dir)
    ids = tokenizer.encode(answer)
    cut = next(k for k in range(1, len(ids)) if '"arguments": {"ci' in tokenizer.decode(ids[:k]))
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    engine = _thinking_engine(tiny_model_dir, answer)
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="hermes")) as url, sdk(url) as client:
        whole = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=cut)
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],
                                                     max_tokens=cut, stream=True))
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and choice.message.content == "Let me look.\n"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments.startswith('{"ci') and "<tool_call>" not in calls[0].function.arguments
    deltas = [c.choices[0] for c in chunks if c.choices]
    pieces = [call.model_dump(exclude_none=True) for d in deltas for call in d.delta.tool_calls or []]
    assert joined(pieces) == [{"name": "get_weather", "arguments": calls[0].function.arguments}]
    assert deltas[-1].finish_reason == "length"


def test_llama_calls_and_parallel_tool_calls_false(tiny_model_dir: Path) -> None:
    calls = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_weather", "parameters": {}}'
    messages = [{"role": "user", "content": "Weather?"}]
    with serve_in_thread(create_app(_thinking_engine(tiny_model_dir, calls), "llama", tool_call_parser="llama3_json")) \
            as url, sdk(url) as client:
        both = client.chat.completions.create(model="llama", messages=messages, tools=[WEATHER], max_tokens=128)
        one = client.chat.completions.create(model="llama", messages=messages, tools=[WEATHER], max_tokens=128,
                                             parallel_tool_calls=False)
        streamed = [c.choices[0] for c in client.chat.completions.create(
            model="llama", messages=messages, tools=[WEATHER], max_tokens=128, stream=True) if c.choices]
    assert [json.loads(c.function.arguments) for c in both.choices[0].message.tool_calls or []] == [{"city": "Oslo"}, {}]
    assert both.choices[0].message.content is None and both.choices[0].finish_reason == "tool_calls"
    assert len(one.choices[0].message.tool_calls or []) == 1
    assert not "".join(c.delta.content or "" for c in streamed)  # nothing of the calls leaked as text
    assert len(joined([call.model_dump(exclude_none=True) for c in streamed for call in c.delta.tool_calls or []])) == 2


def test_a_thinking_tool_caller_behind_the_gateway(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.gateway.harness import gateway_config, model_entry, running_gateway

    engine = _thinking_engine(tiny_model_dir, "<think>I need the weather.</think>\n" + OSLO)
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    with serve_in_thread(create_app(engine, "agent", "think", "hermes")) as url, \
            running_gateway(gateway_config(tmp_path, [model_entry("agent", f"{url}/v1")])) as gw, gw.openai() as client:
        response = client.responses.create(model="agent", input="Weather in Oslo?", tools=[tool])
        with client.responses.stream(model="agent", input="Weather in Oslo?", tools=[tool]) as stream:
            events = list(stream)
            streamed = stream.get_final_response()
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == {"city": "Oslo"}  # as the model wrote them
    for answer in (response, streamed):
        reasoning, call = answer.output
        assert reasoning.type == "reasoning" and [c.text for c in reasoning.content or []] == ["I need the weather."]
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Oslo"}
