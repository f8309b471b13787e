"""Strict tools' calls held to their schemas under `tool_choice: "auto"` (engine/held_calls.py): the grammar
lets text and calls of the offered tools through and nothing else, with the Hermes tags as the
tokenizer's added tokens or as plain text; on the tiny model, pushed by a logit bias to open a call, a
strict tool's call comes back with arguments its schema accepts, whole and streamed, where the same
request without `strict` gets text that is no call at all."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import llguidance
import openai
import pytest

from engine.build import build_engine
from engine.held_calls import held_calls
from engine.server.app import create_app
from engine.tokenizer import Tokenizer
from tests.engine.serving import sdk, serve_in_thread

CITY = {"type": "object", "properties": {"city": {"enum": ["Oslo", "Bergen"]}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY, "strict": True}}
LOOSE = {"type": "function", "function": {"name": "loose", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}}}}
MESSAGES = [{"role": "user", "content": "Weather in Oslo?"}]


def accepts(tokenizer: Tokenizer, grammar: str, text: str) -> bool:
    view = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=tokenizer.vocab_size,
                                  eos_token=list(tokenizer.eos_token_ids))
    matcher = llguidance.LLMatcher(view, grammar, log_level=0)
    return all(matcher.consume_token(t) for t in tokenizer.encode(text)) and not matcher.is_error()


@pytest.mark.parametrize("tags", [("<tool_call>", "</tool_call>"), ("<call>", "</call>")])  # added tokens; text
def test_the_grammar_lets_text_and_the_offered_calls_through(tiny_model_dir: Path, tags: tuple[str, str]) -> None:
    tokenizer = Tokenizer(tiny_model_dir)
    assert {"<tool_call>", "</tool_call>"} <= tokenizer.added_tokens and "<call>" not in tokenizer.added_tokens
    start, end = tags

    def call(name: str, arguments: str) -> str:
        return f'{start}\n{{"name": "{name}", "arguments": {arguments}}}\n{end}'

    for parallel in (True, False):
        constraint = held_calls([WEATHER, LOOSE], "hermes", tokenizer.added_tokens, parallel, tags=tags)
        assert constraint is not None
        held = constraint.grammar
        assert accepts(tokenizer, held, "Sure.\n" + call("get_weather", '{"city":"Oslo"}'))
        assert accepts(tokenizer, held, call("loose", '{"y":[1,2]}') + " and some text after")  # not strict: any object
        assert accepts(tokenizer, held, "Just text, with a < sign.")
        assert not accepts(tokenizer, held, "Sure.\n" + call("get_weather", '{"city":"Rome"}'))
        assert not accepts(tokenizer, held, call("get_time", "{}"))  # no such tool
        two = call("get_weather", '{"city":"Bergen"}') + call("loose", "{}")
        if start in tokenizer.added_tokens:  # a tag that is a token cannot be text: one call means one
            assert accepts(tokenizer, held, two) == parallel
        else:  # after the one call, a second is free text (parallel_tool_calls false then keeps the first)
            assert accepts(tokenizer, held, call("get_weather", '{"city":"Oslo"}') + call("get_weather", '"Rome"')) \
                != parallel
    assert held_calls([LOOSE], "hermes", tokenizer.added_tokens, True) is None  # nothing strict: nothing held


def test_a_llama_answer_is_text_or_held_calls(tiny_model_dir: Path) -> None:
    """Llama's format has no tag: an answer that opens with `{` is calls only, each held."""
    tokenizer = Tokenizer(tiny_model_dir)

    def call(name: str, arguments: str) -> str:
        return f'{{"name": "{name}", "parameters": {arguments}}}'

    for parallel in (True, False):
        constraint = held_calls([WEATHER, LOOSE], "llama3_json", tokenizer.added_tokens, parallel)
        assert constraint is not None
        held = constraint.grammar
        assert accepts(tokenizer, held, call("get_weather", '{"city":"Oslo"}'))
        assert accepts(tokenizer, held, "Plain text, { a brace later") and accepts(tokenizer, held, "  text")
        assert not accepts(tokenizer, held, " " + call("get_weather", '{"city":"Rome"}'))
        assert not accepts(tokenizer, held, call("nope", "{}"))
        assert not accepts(tokenizer, held, call("get_weather", '{"city":"Oslo"}') + " and text")  # calls only
        two = call("get_weather", '{"city":"Oslo"}') + "; " + call("loose", '{"a":1}')
        assert accepts(tokenizer, held, two) == parallel
    assert held_calls([LOOSE], "llama3_json", tokenizer.added_tokens, True) is None
    assert held_calls([WEATHER], "pythonic", tokenizer.added_tokens, True) is None  # a format it does not know


def test_a_strict_tools_call_from_the_tiny_model_is_one_its_schema_accepts(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer(tiny_model_dir)
    opens = tokenizer.token_to_id("<tool_call>")
    engine = build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512)
    ask = {"model": "tiny", "messages": MESSAGES, "max_tokens": 48, "temperature": 1.0, "parallel_tool_calls": False,
           "logit_bias": {str(opens): 100}}  # the model opens a call at once; the grammar holds the rest
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="hermes")) as url, sdk(url) as client:
        held = [client.chat.completions.create(**ask, tools=[WEATHER], seed=seed)  # type: ignore[arg-type]
                for seed in range(4)]
        loose = [client.chat.completions.create(**ask, tools=[{"type": "function", "function": {  # type: ignore[arg-type]
            "name": "get_weather", "parameters": CITY}}], seed=seed) for seed in range(4)]
        chunks = list(client.chat.completions.create(**ask, tools=[WEATHER], seed=7, stream=True))  # type: ignore[arg-type]
    for answer in held:
        calls = answer.choices[0].message.tool_calls or []
        assert answer.choices[0].finish_reason == "tool_calls" and len(calls) == 1
        assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        jsonschema.validate(json.loads(calls[0].function.arguments), CITY)  # type: ignore[union-attr]
    assert all(a.choices[0].message.tool_calls is None for a in loose)  # a random model's call does not parse
    pieces = [d.model_dump() for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert pieces[0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads("".join(p["function"]["arguments"] or "" for p in pieces)), CITY)


def test_a_llama_models_strict_call_is_held(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer(tiny_model_dir)
    brace = tokenizer.token_to_id("{")
    engine = build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512)
    ask = {"model": "tiny", "messages": MESSAGES, "max_tokens": 48, "temperature": 1.0, "parallel_tool_calls": False,
           "logit_bias": {str(brace): 100}}  # the model opens with `{`: from there it is a call
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="llama3_json")) as url, sdk(url) as client:
        held = [client.chat.completions.create(**ask, tools=[WEATHER], seed=seed) for seed in range(4)]  # type: ignore[arg-type]
        loose = [client.chat.completions.create(**ask, tools=[{"type": "function", "function": {  # type: ignore[arg-type]
            "name": "get_weather", "parameters": CITY}}], seed=seed) for seed in range(4)]
    for answer in held:
        calls = answer.choices[0].message.tool_calls or []
        assert answer.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
        jsonschema.validate(json.loads(calls[0].function.arguments), CITY)  # type: ignore[union-attr]
    assert all(a.choices[0].message.tool_calls is None for a in loose)


def test_a_strict_schema_the_grammar_cannot_hold_is_a_400(tiny_model_dir: Path) -> None:
    engine = build_engine(tiny_model_dir, num_blocks=64, block_size=16, max_model_len=256)
    bad = {"type": "function", "function": {"name": "f", "strict": True,
                                            "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}}
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="hermes")) as url, sdk(url) as client, \
            pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[bad], max_tokens=4)  # type: ignore[list-item]
    assert refused.value.body["param"] == "tools"  # type: ignore[index]


def allowed(mode: str, *names: str) -> dict:
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": [
        {"type": "function", "function": {"name": name}} for name in names]}}


def test_allowed_tools_narrow_what_is_called_and_keep_the_prompt(tiny_model_dir: Path) -> None:
    """OpenAI's allowed_tools: "required" calls one of the allowed tools, "auto" may call only those (held
    by the grammar once the model opens a call); the prompt offers every tool either way, so a second
    turn allowing other tools reuses the first's cached prefix."""
    tokenizer = Tokenizer(tiny_model_dir)
    opens = tokenizer.token_to_id("<tool_call>")
    engine = build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512)
    tools = [WEATHER, LOOSE]
    ask = {"model": "tiny", "messages": MESSAGES, "max_tokens": 48, "temperature": 1.0, "tools": tools,
           "parallel_tool_calls": False}
    with serve_in_thread(create_app(engine, "tiny", tool_call_parser="hermes")) as url, sdk(url) as client:
        required = [client.chat.completions.create(**ask, tool_choice=allowed("required", "get_weather"), seed=seed)  # type: ignore[arg-type]
                    for seed in range(4)]
        auto = [client.chat.completions.create(**ask, tool_choice=allowed("auto", "get_weather"), seed=seed,  # type: ignore[arg-type]
                                               logit_bias={str(opens): 100}) for seed in range(4)]
        free = [client.chat.completions.create(**ask, seed=seed, logit_bias={str(opens): 100})  # type: ignore[arg-type]
                for seed in range(4)]
        other = client.chat.completions.create(**ask, tool_choice=allowed("required", "loose"), seed=1)  # type: ignore[arg-type]
        narrowed = client.chat.completions.create(**{**ask, "tools": [LOOSE], "max_tokens": 2}, seed=1)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as unknown:
            client.chat.completions.create(**ask, tool_choice=allowed("auto", "get_time"))  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**ask, tool_choice=allowed("sometimes", "loose"))  # type: ignore[arg-type]
    for answer in required + auto:
        calls = answer.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
        jsonschema.validate(json.loads(calls[0].function.arguments), CITY)  # type: ignore[union-attr]
    written = [a.choices[0].message.content or "" for a in free] + [
        c.function.name for a in free for c in a.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    assert any('"name": "loose"' in text or text == "loose" for text in written)  # unnarrowed, it calls the other
    assert other.usage is not None and other.usage.prompt_tokens_details is not None
    assert other.usage.prompt_tokens_details.cached_tokens >= 16  # the same prompt as the turns before
    assert narrowed.usage is not None and narrowed.usage.prompt_tokens < other.usage.prompt_tokens  # every tool was in it
    assert unknown.value.body["param"] == "tool_choice"  # type: ignore[index]
