"""gpt-oss's Harmony answers (engine/harmony.py): token streams cut at every boundary read as the whole answer
(analysis to reasoning, final to content, a commentary message to functions.NAME to a call), and the engine
server answers chat over a real socket with the openai SDK, whole and streamed, under vLLM's flags
(`--reasoning-parser openai_gptoss --tool-call-parser openai`, also through `pitstop engine serve`) and by
default for a gpt-oss model, whose checkpoint's template renders the prompt with the request's reasoning_effort."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.async_engine import AsyncEngine
from engine.build import build_engine
from engine.config import EngineConfig
from engine.harmony import HarmonyText, check_tokenizer, parsers_for
from engine.llm_engine import LLMEngine
from engine.reasoning import split
from engine.server.app import create_app
from engine.tokenizer import Tokenizer
from engine.tool_parsers import parse_calls
from tests.engine.fakes import ScriptedRunner
from tests.engine.gpt_oss_checkpoints import save_serving_gpt_oss
from tests.engine.hf_checkpoints import transformers_greedy
from tests.engine.serving import engine_serve_process, sdk, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]

THINK_AND_ANSWER = ("<|channel|>analysis<|message|>The user asks about the sea. Café ✓<|end|>"
                    "<|start|>assistant<|channel|>final<|message|>It is blue.<|return|>")
CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Oslo"}<|call|>')
CALL_RECIPIENT_FIRST = ('<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>'
                        '{"city": "Oslo"}<|call|>')
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_serving_gpt_oss(tmp_path_factory.mktemp("harmony") / "tiny-gpt-oss")


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer(model_dir)


def _read(tokenizer: Tokenizer, pieces: list[list[int]]) -> tuple[str, list[str]]:
    reader = HarmonyText(tokenizer)
    deltas = [reader.feed(piece) for piece in pieces] + [reader.finish()]
    return "".join(deltas), deltas


@pytest.mark.parametrize(("answer", "reasoning", "content", "call"), [
    (THINK_AND_ANSWER, "The user asks about the sea. Café ✓", "It is blue.", None),
    (CALL, "Need the weather.", None, ("get_weather", {"city": "Oslo"})),
    (CALL_RECIPIENT_FIRST, "", None, ("get_weather", {"city": "Oslo"})),
])  # fmt: skip
def test_token_streams_cut_anywhere_read_as_the_whole(tokenizer: Tokenizer, answer: str, reasoning: str,
                                                      content: str | None, call: tuple | None) -> None:
    ids = tokenizer.encode(answer)
    whole, _ = _read(tokenizer, [ids])
    parts = split(whole)
    calls = parse_calls(parts.content, "hermes")
    assert parts.reasoning == reasoning
    if call is None:
        assert calls is None and parts.content == content
    else:
        assert calls is not None and calls.content is None and len(calls.calls) == 1
        function = calls.calls[0]["function"]
        assert (function["name"], json.loads(function["arguments"])) == call
    for cut in range(1, len(ids)):
        assert _read(tokenizer, [ids[:cut], ids[cut:]])[0] == whole
    text, deltas = _read(tokenizer, [[token] for token in ids])
    assert text == whole and not any("\ufffd" in delta for delta in deltas)  # a character goes out whole


def test_answers_that_are_not_harmony_or_are_cut(tokenizer: Tokenizer, tiny_model_dir: Path) -> None:
    assert _read(tokenizer, [tokenizer.encode("plain words")])[0] == "plain words"  # no message: as it is
    reader = HarmonyText(tokenizer)
    cut = reader.feed(tokenizer.encode(CALL)[:-3]) + reader.finish(stopped=False)  # max_tokens mid-call
    assert parse_calls(split(cut).content, "hermes") is None
    # A misread channel shows: commentary without a recipient is content, analysis is reasoning.
    preamble = "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>"
    assert split(_read(tokenizer, [tokenizer.encode(preamble)])[0]).content == "Checking.Done."
    assert parsers_for("gpt_oss", None, None) == ("openai_gptoss", "openai")
    assert parsers_for("gpt_oss", "think", None) == ("think", "openai")
    assert parsers_for("llama", None, None) == (None, None)
    with pytest.raises(ValueError, match=re.escape("tokenizer lacks <|channel|>")):
        check_tokenizer(Tokenizer(tiny_model_dir))  # a model that does not speak Harmony


def _scripted_server(tokenizer: Tokenizer, answer: str) -> AsyncEngine:
    runner = ScriptedRunner(tokenizer.encode(answer), tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    runner.eos_token_ids = tuple(tokenizer.eos_token_ids)  # <|return|> and <|call|>
    return AsyncEngine(LLMEngine(EngineConfig(num_blocks=64, block_size=16, max_model_len=512), runner,
                                 tokenizer=tokenizer))


def test_the_server_answers_with_reasoning_content_and_tool_calls(tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    engine = _scripted_server(tokenizer, THINK_AND_ANSWER)
    with serve_in_thread(create_app(engine, "gpt-oss", "openai_gptoss", "openai")) as url, sdk(url) as client:
        whole = client.chat.completions.create(model="gpt-oss", messages=messages, max_tokens=128)
        chunks = list(client.chat.completions.create(model="gpt-oss", messages=messages, max_tokens=128, stream=True))
    message = whole.choices[0].message
    assert (message.reasoning_content, message.content) == ("The user asks about the sea. Café ✓", "It is blue.")  # type: ignore[attr-defined]
    assert whole.choices[0].finish_reason == "stop"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == message.reasoning_content  # type: ignore[attr-defined]
    assert "".join(d.content or "" for d in deltas) == "It is blue."
    assert len([d for d in deltas if getattr(d, "reasoning_content", None)]) > 3  # streamed as written
    engine = _scripted_server(tokenizer, CALL)
    with serve_in_thread(create_app(engine, "gpt-oss", "openai_gptoss", "openai")) as url, sdk(url) as client:
        called = client.chat.completions.create(model="gpt-oss", messages=messages, tools=TOOLS, max_tokens=128)
        streamed = list(client.chat.completions.create(model="gpt-oss", messages=messages, tools=TOOLS,
                                                       max_tokens=128, stream=True))
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert called.choices[0].finish_reason == "tool_calls" and not called.choices[0].message.content
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    pieces = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads("".join(p.function.arguments or "" for p in pieces)) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"


def test_a_gpt_oss_checkpoint_is_served_with_harmony_by_default(model_dir: Path) -> None:
    state = create_app(build_engine(model_dir, num_blocks=16, block_size=16, device="cpu"), "gpt-oss").state.pitstop
    assert (state.reasoning_parser, state.tool_call_parser) == ("openai_gptoss", "openai")  # by its model_type


def test_pitstop_engine_serve_answers_a_gpt_oss_chat(model_dir: Path, tokenizer: Tokenizer) -> None:
    """`pitstop engine serve` with vLLM's flags on the tiny checkpoint: its template renders the reasoning effort;
    the model's own (random) greedy tokens are transformers', read as Harmony."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, reasoning_effort="high"))
    assert "Reasoning: high" in tokenizer.decode(prompt, skip_special_tokens=False)
    expected = transformers_greedy(model_dir, prompt, 12)
    served = engine_serve_process("--model", str(model_dir), "--num-blocks", "64", "--served-model-name", "gpt-oss",
                                  "--log-level", "warning", "--device", "cpu", "--reasoning-parser", "openai_gptoss",
                                  "--tool-call-parser", "openai")
    with served as (url, _), sdk(url) as client:
        answer = client.chat.completions.create(model="gpt-oss", messages=messages, max_tokens=12, temperature=0,
                                                reasoning_effort="high", extra_body={"return_token_ids": True})
    got = answer.choices[0].token_ids  # type: ignore[attr-defined]
    assert answer.usage is not None and answer.usage.prompt_tokens == len(prompt)
    assert len(got) > 3 and got == expected[:len(got)]
    reader = HarmonyText(tokenizer)
    parts = split(reader.feed(got) + reader.finish(stopped=got[-1] in tokenizer.eos_token_ids))
    assert (answer.choices[0].message.content or "") == parts.content
    assert (getattr(answer.choices[0].message, "reasoning_content", None) or "") == parts.reasoning


def test_a_thinking_budget_on_a_harmony_model_is_a_400_naming_reasoning_effort(tokenizer: Tokenizer) -> None:
    """gpt-oss thinks on a Harmony channel: a budget is refused for what it is (not "start --reasoning-parser");
    `reasoning_effort` is the knob, and answers."""
    import openai

    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    with serve_in_thread(create_app(_scripted_server(tokenizer, THINK_AND_ANSWER), "gpt-oss", "openai_gptoss",
                                    "openai")) as url, sdk(url) as client:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="gpt-oss", messages=messages, max_tokens=128, stream=stream,
                                               extra_body={"thinking_token_budget": 16})
            error = refused.value.body
            assert isinstance(error, dict) and error["param"] == "thinking_token_budget"
            assert "reasoning_effort" in error["message"] and "--reasoning-parser" not in error["message"]
        answer = client.chat.completions.create(model="gpt-oss", messages=messages, max_tokens=128,
                                                reasoning_effort="low")
    assert answer.choices[0].message.content == "It is blue."
