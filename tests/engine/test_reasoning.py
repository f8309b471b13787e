"""The `think` reasoning parser: whole answers split as vLLM's deepseek_r1 / qwen3 parsers split them, any
streaming of the same text (tags cut across deltas) gives the same reasoning and content, and the engine
server (`--reasoning-parser think`) answers chat with `reasoning_content`, whole and streamed, over a real
socket with the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.reasoning import ReasoningSplitter, Split, split, starts_inside
from engine.server.app import create_app
from engine.tokenizer import Tokenizer
from tests.engine.fakes import ScriptedRunner
from tests.engine.serving import sdk, serve_in_thread


@pytest.mark.parametrize("text, inside, reasoning, content", [
    ("<think>\nsteps</think>\n\nThe answer.", False, "\nsteps", "\n\nThe answer."),  # Qwen3 writes the tag
    ("steps</think>The answer.", True, "steps", "The answer."),  # DeepSeek-R1: the prompt opened it
    ("The answer, no thinking.", False, "", "The answer, no thinking."),
    ("still thinking when cut", True, "still thinking when cut", ""),  # max_tokens inside the block
    ("<think>cut", False, "cut", ""),
    ("a </think> b", False, "", "a </think> b"),  # a closing tag outside a block is text
    ("<think></think>x</think>", False, "", "x</think>"),
    ("  <think>r</think>c", False, "r", "c"),
    ("<thin", False, "", "<thin"),  # not a tag after all, once the answer ends
])
def test_whole_answers(text: str, inside: bool, reasoning: str, content: str) -> None:
    assert split(text, inside) == Split(reasoning, content)


def test_the_prompt_opens_the_block() -> None:
    assert starts_inside("<|User|>hi<|Assistant|><think>\n")
    assert not starts_inside("<|im_start|>assistant\n") and not starts_inside("</think>")


def test_a_tag_cut_across_deltas_is_held_back() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<th") == Split()
    assert splitter.feed("ink>plan") == Split(reasoning="plan")
    assert splitter.feed(" more</thi") == Split(reasoning=" more")
    assert splitter.feed("nk>Ans") == Split(content="Ans")
    assert splitter.feed("wer") == Split(content="wer")
    assert splitter.flush() == Split()


pieces = st.sampled_from(["<think>", "</think>", "<th", "ink>", "</", "think>", "a", " b", "\n", "<", ">"])


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(pieces, max_size=12), cuts=st.lists(st.integers(0, 80), max_size=6), inside=st.booleans())
def test_streaming_gives_what_the_whole_answer_gives(parts: list[str], cuts: list[int], inside: bool) -> None:
    text = "".join(parts)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    splitter = ReasoningSplitter(inside)
    streamed = [splitter.feed(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)] + [splitter.flush()]
    assert Split("".join(s.reasoning for s in streamed), "".join(s.content for s in streamed)) == split(text, inside)


ANSWER = "<think>\nFirst, the sea.</think>\n\nIt is blue."


@pytest.mark.parametrize("parser", ["think", None])
def test_the_engine_server_splits_a_reasoning_models_answer(tiny_model_dir: Path, parser: str | None) -> None:
    """The model (scripted to write ANSWER, then EOS) through the served chat API; without the parser the
    tags stay in the text, as vLLM without --reasoning-parser leaves them."""
    tokenizer = Tokenizer(tiny_model_dir)
    runner = ScriptedRunner(tokenizer.encode(ANSWER), tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    engine = AsyncEngine(LLMEngine(EngineConfig(num_blocks=64, block_size=16, max_model_len=256), runner,
                                   tokenizer=tokenizer))
    messages = [{"role": "user", "content": "What color is the sea?"}]
    with serve_in_thread(create_app(engine, "tiny", parser)) as url, sdk(url) as client:
        whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64)
        chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=64, stream=True))
        inside = len(tokenizer.encode("<think>\nFirst, the"))  # a cut past the tag, before its end
        cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=inside)
    message = whole.choices[0].message
    streamed = [c.choices[0].delta for c in chunks if c.choices]
    thinking = "".join(getattr(d, "reasoning_content", None) or "" for d in streamed)
    text = "".join(d.content or "" for d in streamed)
    if parser is None:
        assert message.content == ANSWER and not getattr(message, "reasoning_content", None)
        assert text == ANSWER and thinking == ""
        return
    assert (message.reasoning_content, message.content) == ("\nFirst, the sea.", "\n\nIt is blue.")  # type: ignore[attr-defined]
    assert (thinking, text) == ("\nFirst, the sea.", "\n\nIt is blue.")
    assert whole.choices[0].finish_reason == "stop" and whole.usage is not None
    assert whole.usage.completion_tokens == len(tokenizer.encode(ANSWER)) + 1  # and the EOS
    # Cut inside the block by max_tokens: all thinking, no answer.
    assert cut.choices[0].finish_reason == "length" and not cut.choices[0].message.content
    assert cut.choices[0].message.reasoning_content  # type: ignore[attr-defined]


def test_a_reasoning_engine_behind_the_gateway_answers_each_api_with_its_thinking(tiny_model_dir: Path,
                                                                                  tmp_path: Path) -> None:
    """The whole path: the engine server splits the thinking, the gateway (its pitstop-engine backend)
    turns it into a Responses reasoning item and an Anthropic thinking block."""
    import anthropic

    from tests.gateway.harness import gateway_config, model_entry, running_gateway

    tokenizer = Tokenizer(tiny_model_dir)
    runner = ScriptedRunner(tokenizer.encode(ANSWER), tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    engine = AsyncEngine(LLMEngine(EngineConfig(num_blocks=64, block_size=16, max_model_len=256), runner,
                                   tokenizer=tokenizer))
    with serve_in_thread(create_app(engine, "thinker", "think")) as url, \
            running_gateway(gateway_config(tmp_path, [model_entry("thinker", f"{url}/v1")])) as gw:
        with gw.openai() as client:
            response = client.responses.create(model="thinker", input="What color is the sea?")
        claude = anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0)
        message = claude.messages.create(model="thinker", max_tokens=64,
                                         messages=[{"role": "user", "content": "What color is the sea?"}])
    reasoning, answer = response.output
    assert reasoning.type == "reasoning" and [c.text for c in reasoning.content or []] == ["\nFirst, the sea."]
    assert answer.type == "message" and response.output_text == "\n\nIt is blue."
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "\nFirst, the sea."  # type: ignore[union-attr]


@pytest.mark.parametrize("parser", ["think", None])
def test_a_structured_answer_follows_the_thinking(tiny_model_dir: Path, parser: str | None) -> None:
    """With the parser, the grammar holds only what follows the thinking (a model scripted to think, then
    answer in the schema, is answered whole); without it, the thinking breaks the grammar at once."""
    tokenizer = Tokenizer(tiny_model_dir)
    script = '<think>a is one</think>\n{"a":1}'
    runner = ScriptedRunner(tokenizer.encode(script), tokenizer.eos_token_ids[0], tokenizer.vocab_size)
    engine = AsyncEngine(LLMEngine(EngineConfig(num_blocks=64, block_size=16, max_model_len=256), runner,
                                   tokenizer=tokenizer))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    with serve_in_thread(create_app(engine, "tiny", parser)) as url, sdk(url) as client:
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a?"}],
                                                max_tokens=64, response_format=fmt)  # type: ignore[arg-type]
    message = answer.choices[0].message
    if parser is None:
        assert message.content != '{"a":1}' and len(answer.choices[0].message.content or "") <= 2
        return
    assert (message.reasoning_content, message.content) == ("a is one", '\n{"a":1}')  # type: ignore[attr-defined]
    assert json.loads(message.content or "") == {"a": 1} and answer.choices[0].finish_reason == "stop"
