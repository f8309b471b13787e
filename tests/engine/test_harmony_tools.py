"""Tool calls of a served gpt-oss under Harmony through the openai SDK (engine/harmony_tools.py): the tiny gpt-oss
with random weights, whose only shape is the grammar's, answers a forced tool_choice ("required", a named function,
allowed_tools in mode "required") with one call of an allowed tool whose arguments fit its schema, its thinking as
reasoning_content, whole and streamed alike; with a strict tool under "auto" it answers in final text or calls,
a strict call's arguments schema-valid; tool_choice "none" keeps the tools out of the prompt; bad tools are 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from engine.build import build_engine
from engine.server.app import create_app
from engine.tokenizer import Tokenizer
from tests.engine.gpt_oss_checkpoints import save_serving_gpt_oss
from tests.engine.serving import sdk, serve_in_thread
from tests.engine.test_harmony_tool_grammar import TOOLS, TZ, WEATHER, WX, ZONE

MESSAGES = [{"role": "user", "content": "Oslo?"}]
SCHEMAS = {"wx": WEATHER, "tz": ZONE}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A prompt offering tools is some 450 tokens of the tiny byte-level vocabulary: a longer context than the default.
    return save_serving_gpt_oss(tmp_path_factory.mktemp("harmony_tools") / "tiny-gpt-oss", context=1024)


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[openai.OpenAI]:
    app = create_app(build_engine(model_dir, num_blocks=160, block_size=16, device="cpu"), "gpt-oss")
    with serve_in_thread(app) as url, sdk(url) as client:
        yield client


@pytest.fixture(scope="module")
def bias(model_dir: Path) -> dict[str, int]:
    """Short thoughts (`<|end|>` favoured): the answer fits in max_tokens."""
    return {str(Tokenizer(model_dir).token_to_id("<|end|>")): 6}


def _calls_streamed(chunks: list) -> tuple[list[tuple[str, str]], str, str | None, str | None]:
    """The streamed calls (name, arguments joined), the reasoning, the content and the last finish reason."""
    deltas = [c.choices[0] for c in chunks if c.choices]
    calls: dict[int, list[str]] = {}
    for piece in (tc for d in deltas for tc in (d.delta.tool_calls or [])):
        name = piece.function.name if piece.function and piece.function.name else None
        calls.setdefault(piece.index, [name or "", ""])[1] += piece.function.arguments or "" if piece.function else ""
    reasoning = "".join(getattr(d.delta, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.delta.content or "" for d in deltas) or None
    return [(n, a) for n, a in calls.values()], reasoning, content, deltas[-1].finish_reason


@pytest.mark.parametrize(("tool_choice", "names", "finish"), [
    ("required", {"wx", "tz"}, "tool_calls"),
    ({"type": "function", "function": {"name": "tz"}}, {"tz"}, "stop"),  # OpenAI's finish reason for a named one
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "wx"}}]}},
     {"wx"}, "tool_calls"),
])  # fmt: skip
def test_a_forced_tool_choice_answers_one_valid_call_whole_and_streamed(client: openai.OpenAI, bias: dict[str, int],
                                                                         tool_choice: object, names: set[str],
                                                                         finish: str) -> None:
    thoughts = []
    for seed in range(6):
        asked = {"model": "gpt-oss", "messages": MESSAGES, "tools": TOOLS, "tool_choice": tool_choice,
                 "max_tokens": 160, "seed": seed, "logit_bias": bias}
        whole = client.chat.completions.create(**asked)  # type: ignore[call-overload]
        choice = whole.choices[0]
        assert choice.finish_reason == finish and choice.message.tool_calls and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0].function  # type: ignore[union-attr]
        assert call.name in names and not choice.message.content, choice
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        thoughts.append(getattr(choice.message, "reasoning_content", None))
        streamed = list(client.chat.completions.create(**asked, stream=True))  # type: ignore[call-overload]
        calls, reasoning, content, last = _calls_streamed(streamed)  # same seed, same answer
        assert [(n, json.loads(a)) for n, a in calls] == [(call.name, json.loads(call.arguments))]
        assert content is None and last == finish
        assert reasoning == (thoughts[-1] or "")
    assert any(thoughts) and all("<|" not in (t or "") for t in thoughts), thoughts
    if tool_choice == "required":
        assert not all(thoughts), thoughts  # some seeds call at once


def test_a_strict_tool_under_auto_holds_the_calls_made_and_leaves_text_free(client: openai.OpenAI,
                                                                            model_dir: Path) -> None:
    """Pushed towards the final channel (`<|channel|>` and `f` favoured), some seeds answer in text and some call;
    every call of the strict tool fits its schema. The same requests with `strict` off run without a grammar,
    and the random model writes no valid call at all."""
    tokenizer = Tokenizer(model_dir)
    bias = {str(tokenizer.token_to_id(name)): 4 for name in ("<|channel|>", "f")} | \
        {str(tokenizer.token_to_id("<|end|>")): 6}
    loose = [{"type": "function", "function": {k: v for k, v in WX["function"].items() if k != "strict"}}, TZ]
    texts, calls, loose_calls = 0, 0, 0
    for seed in range(8):
        asked = {"model": "gpt-oss", "messages": MESSAGES, "max_tokens": 120, "seed": seed, "logit_bias": bias}
        whole = client.chat.completions.create(**asked, tools=TOOLS)  # type: ignore[call-overload]
        choice = whole.choices[0]
        streamed = _calls_streamed(list(client.chat.completions.create(**asked, tools=TOOLS, stream=True)))  # type: ignore[call-overload]
        if choice.message.tool_calls:
            call = choice.message.tool_calls[0].function  # type: ignore[union-attr]
            assert choice.finish_reason == "tool_calls" and call.name in SCHEMAS
            if call.name == "wx":
                jsonschema.validate(json.loads(call.arguments), WEATHER)
                calls += 1
            assert [(n, json.loads(a)) for n, a in streamed[0]] == [(call.name, json.loads(call.arguments))]
            assert streamed[3] == "tool_calls"
        else:
            assert choice.message.content and "<|" not in choice.message.content
            assert streamed[0] == [] and streamed[2] == choice.message.content
            texts += 1
        free = client.chat.completions.create(**asked, tools=loose).choices[0]  # type: ignore[call-overload]
        for tool_call in free.message.tool_calls or []:
            try:
                jsonschema.validate(json.loads(tool_call.function.arguments), WEATHER)  # type: ignore[union-attr]
                loose_calls += 1
            except (ValueError, jsonschema.ValidationError):
                pass
    assert texts and calls and not loose_calls, (texts, calls, loose_calls)


def test_tool_choice_none_keeps_the_tools_out(client: openai.OpenAI) -> None:
    asked = {"model": "gpt-oss", "messages": MESSAGES, "max_tokens": 8, "seed": 0}
    bare = client.chat.completions.create(**asked)  # type: ignore[call-overload]
    offered = client.chat.completions.create(**asked, tools=TOOLS)  # type: ignore[call-overload]
    none = client.chat.completions.create(**asked, tools=TOOLS, tool_choice="none")  # type: ignore[call-overload]
    assert none.usage.prompt_tokens == bare.usage.prompt_tokens < offered.usage.prompt_tokens  # type: ignore[union-attr]
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content == \
        bare.choices[0].message.content  # the same answer as without tools: no grammar either


@pytest.mark.parametrize("stream", [False, True])
def test_bad_tools_are_400s_naming_the_field(client: openai.OpenAI, stream: bool) -> None:
    unusable = {"type": "function", "function": {"name": "bad", "parameters": {"type": "nonsense"}, "strict": True}}
    cases = [({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
             ({"tools": [WX, unusable]}, "tools", "nonsense"),
             ({"tools": [unusable], "tool_choice": "required"}, "tool_choice", "nonsense")]
    for extra, param, said in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="gpt-oss", messages=MESSAGES, max_tokens=8, stream=stream,  # type: ignore[call-overload]
                                           **extra)
        error = raised.value.body
        assert isinstance(error, dict) and error["param"] == param and said in error["message"], error


def test_a_forced_custom_tool_answers_its_raw_input(client: openai.OpenAI) -> None:
    """Not a Harmony message: forced_tools.py's grammar holds the input itself, given back as a custom call."""
    patch = {"type": "custom", "custom": {"name": "patch", "format": {"type": "grammar", "grammar": {
        "syntax": "regex", "definition": "[a-z]{3}"}}}}
    whole = client.chat.completions.create(model="gpt-oss", messages=MESSAGES, tools=[patch],  # type: ignore[list-item]
                                           tool_choice={"type": "custom", "custom": {"name": "patch"}},  # type: ignore[arg-type,typeddict-item]
                                           max_tokens=8, seed=0)
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.type == "custom" and len(call.custom.input) == 3  # type: ignore[union-attr]


def test_a_call_cut_by_max_tokens_is_the_partial_call_not_markup(client: openai.OpenAI, bias: dict[str, int]) -> None:
    """Under Harmony a call's text is the engine's own translation: cut by max_tokens, the whole answer gives the
    partial call as the stream sent it, both finishing "length", and no `<tool_call>` markup reaches the client."""
    cut = 0
    for seed in range(4):
        asked = {"model": "gpt-oss", "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required",
                 "max_tokens": 70, "seed": seed, "logit_bias": bias}
        choice = client.chat.completions.create(**asked).choices[0]  # type: ignore[call-overload]
        calls, _, content, last = _calls_streamed(list(client.chat.completions.create(**asked, stream=True)))  # type: ignore[call-overload]
        assert choice.finish_reason == last == "length"
        assert "<tool_call>" not in (choice.message.content or "") and "<tool_call>" not in (content or "")
        whole = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]  # type: ignore[union-attr]
        assert whole == calls
        cut += bool(whole)
    assert cut  # at least one answer was cut inside its call
