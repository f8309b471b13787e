"""Structured outputs on the tiny model, whose weights are random: left alone it writes noise, held to a
grammar it writes text that parses. JSON schemas (validated with jsonschema), any JSON object, regexes
and choices, sampled at temperature 1 over many seeds; through the engine, and over a real socket with
the openai SDK's own `parse` helper; and the 400s for what cannot be held."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pydantic
import pytest
import torch

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.sequence import Sequence
from engine.structured_output import OutputConstraint, mask_disallowed
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import engine_server, sdk

MODEL = "tiny"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "rain": {"type": "boolean"},
        "temperature": {"type": "integer", "minimum": -40, "maximum": 50},
        "wind": {"enum": ["calm", "breeze", "gale"]},
        "hours": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 23}, "maxItems": 3},
    },
    "required": ["city", "rain", "temperature", "wind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    tokenizer = Tokenizer(tiny_model_dir)
    runner = TorchModelRunner(tiny_model_dir, 512, 16, dtype=torch.float32)
    return LLMEngine(EngineConfig(num_blocks=512, max_num_seqs=16), runner, tokenizer=tokenizer)


def answers(engine: LLMEngine, constraint: OutputConstraint | None, seeds: range, max_tokens: int = 120) -> list[Sequence]:
    assert engine.tokenizer is not None
    prompt = engine.tokenizer.encode("Report the weather as JSON:")
    seqs = [engine.add_request(f"s{seed}-{id(constraint)}", prompt, SamplingParams(
        temperature=1.0, seed=seed, max_tokens=max_tokens, constraint=constraint)) for seed in seeds]
    while engine.has_unfinished():
        engine.step()
    return seqs


def test_a_started_engine_builds_its_grammar_compiler_before_any_structured_request(tiny_model_dir: Path) -> None:
    """So the first structured request does not wait for llguidance's view of the vocabulary; an engine
    that cannot hold answers to a grammar (no tokenizer) builds none."""
    from engine.async_engine import AsyncEngine

    runner = TorchModelRunner(tiny_model_dir, 64, 4, dtype=torch.float32)
    config = EngineConfig(num_blocks=64, max_num_seqs=4)
    able = LLMEngine(config, runner, tokenizer=Tokenizer(tiny_model_dir))
    unable = LLMEngine(config, runner)
    assert able.can_constrain and not unable.can_constrain

    async def scenario() -> None:
        engines = [AsyncEngine(able), AsyncEngine(unable)]
        for engine in engines:
            await engine.start()
        deadline = time.monotonic() + 60  # a liveness bound, not a timing: the build takes well under a second
        while able._grammars is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for engine in engines:
            await engine.shutdown()

    asyncio.run(scenario())
    assert able._grammars is not None and unable._grammars is None


def text_of(engine: LLMEngine, seq: Sequence) -> str:
    assert engine.tokenizer is not None
    return engine.tokenizer.decode(seq.output_token_ids)


def test_a_schema_holds_every_sampled_answer(engine: LLMEngine) -> None:
    for seq in answers(engine, OutputConstraint.json_schema(SCHEMA), range(12)):
        assert seq.finish_reason == "stop", text_of(engine, seq)
        jsonschema.validate(json.loads(text_of(engine, seq)), SCHEMA)
    free = [text_of(engine, s) for s in answers(engine, None, range(4), max_tokens=30)]
    assert not any(_parses(text) for text in free)  # the same model, unconstrained: noise


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_json_object_regex_and_choice(engine: LLMEngine) -> None:
    for seq in answers(engine, OutputConstraint.json_object(), range(6), max_tokens=200):
        if seq.finish_reason == "stop":  # an object may be cut by max_tokens; a finished one parses
            assert isinstance(json.loads(text_of(engine, seq)), dict)
        else:
            assert text_of(engine, seq).startswith("{")
    pattern = r"[A-Z]{2}-[0-9]{3}(/[a-z]{1,8})?"  # not \d: the Rust regex's Unicode digits outrun Python's
    for seq in answers(engine, OutputConstraint.regex(pattern, "structured_outputs"), range(8)):
        assert re.fullmatch(pattern, text_of(engine, seq)) and seq.finish_reason == "stop", text_of(engine, seq)
    arithmetic = 'start: expr\nexpr: num | expr OP num | "(" expr ")"\nOP: "+" | "-" | "*"\nnum: /[1-9][0-9]{0,2}/'
    expressions = answers(engine, OutputConstraint.grammar(arithmetic, "structured_outputs"), range(6), max_tokens=40)
    finished = [text_of(engine, seq) for seq in expressions if seq.finish_reason == "stop"]
    assert finished
    for text in finished:
        assert re.fullmatch(r"[0-9+\-*()]+", text)
        ast.parse(text, mode="eval")  # a well-formed arithmetic expression
    gbnf = 'root ::= "cat" | "dog" [s]?'
    found_gbnf = {text_of(engine, s) for s in answers(engine, OutputConstraint.grammar(gbnf, "structured_outputs"),
                                                      range(8))}
    assert found_gbnf <= {"cat", "dog", "dogs"} and found_gbnf
    options = ["yes", "no", 'it says "maybe"\nor not']
    found = {text_of(engine, s) for s in answers(engine, OutputConstraint.choice(options, "structured_outputs"),
                                                 range(12))}
    assert found <= set(options) and len(found) >= 2


@pytest.mark.parametrize("inside", [False, True])
def test_after_thinking_the_grammar_holds_what_follows_the_think_block(engine: LLMEngine, inside: bool) -> None:
    """A reasoning model's grammar (OutputConstraint.after_thinking): free text up to `</think>`, then
    exactly the answer's grammar: the mask there is the plain schema's first mask (blank tokens aside), and a wrong answer
    after the thinking is refused; without the prompt opening the block, the answer may also come at once."""
    assert engine.tokenizer is not None
    compiler, schema = engine.grammars(), OutputConstraint.json_schema(SCHEMA)
    thinking = schema.after_thinking(inside)
    opening = "" if inside else "<think>"

    def masked(matcher: object) -> torch.Tensor:
        logits = torch.zeros(1, compiler.vocab_size)
        mask_disallowed(logits, [matcher])  # type: ignore[list-item]
        return torch.isinf(logits[0])

    def fed(text: str) -> object:
        matcher = compiler.matcher(thinking)
        assert all(matcher.consume(t) for t in engine.tokenizer.encode(text)), text  # type: ignore[union-attr]
        return matcher

    plain = masked(compiler.matcher(schema))
    mid_thought = masked(fed(opening + "Let me think"))
    assert mid_thought.sum() < plain.sum() / 10  # thinking: nearly any token
    after = masked(fed(opening + "Let me think about the weather.</think>\n"))
    assert not (after & ~plain).any()  # the schema's first tokens, all of them ...
    extra = (plain & ~after).nonzero().flatten().tolist()  # ... and only blank ones besides
    assert all(not engine.tokenizer.decode([t]).strip() for t in extra)
    wrong = fed(opening + "Done.</think>")
    assert not all(wrong.consume(t) for t in engine.tokenizer.encode('{"city": 5'))  # type: ignore[attr-defined]
    direct = compiler.matcher(thinking)  # an answer at once: whole, unless the prompt opened a block
    assert all(direct.consume(t) for t in engine.tokenizer.encode(
        '{"city":"Oslo","rain":false,"temperature":3,"wind":"calm"}'))
    assert direct.complete is (not inside)  # type: ignore[attr-defined]


def test_masks_match_the_matchers_own_bitmask_row_by_row(engine: LLMEngine) -> None:
    """mask_disallowed's unpacking against llguidance's compute_bitmask read bit by bit in Python, in a
    batch where the middle row has no grammar (its logits stay as they were)."""
    assert engine.tokenizer is not None
    compiler = engine.grammars()
    matchers = [compiler.matcher(OutputConstraint.json_schema(SCHEMA)), None,
                compiler.matcher(OutputConstraint.regex("[a-c]{2}[0-9]", "structured_outputs"))]
    assert matchers[0] is not None and matchers[2] is not None
    for token in engine.tokenizer.encode('{"city":"Os'):
        assert matchers[0].consume(token)
    logits = torch.randn(3, compiler.vocab_size)
    masked = logits.clone()
    mask_disallowed(masked, matchers)
    assert torch.equal(masked[1], logits[1])
    for row in (0, 2):
        raw = matchers[row]._matcher.compute_bitmask()  # type: ignore[union-attr]
        allowed = [t for t in range(compiler.vocab_size) if raw[t // 8] >> (t % 8) & 1]
        assert 0 < len(allowed) < compiler.vocab_size
        assert masked[row].isfinite().nonzero().flatten().tolist() == allowed
        assert torch.equal(masked[row, allowed], logits[row, allowed])


def test_grammar_errors_are_caught_before_the_request_runs(engine: LLMEngine) -> None:
    for constraint in (OutputConstraint.json_schema({"type": "sphere"}),
                       OutputConstraint.regex("([a-z]", "structured_outputs")):
        with pytest.raises(InvalidRequestError) as raised:
            engine.validate_request([1, 2], params=SamplingParams(constraint=constraint))
        assert raised.value.param == constraint.param


# ---- over HTTP with the openai SDK -----------------------------------------------------------------


class Weather(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=12)
    rain: bool
    wind: str = pydantic.Field(pattern="^(calm|breeze|gale)$")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    with engine_server(tiny_model_dir, MODEL) as url:
        yield url


def test_the_sdk_parse_helper_gets_its_model_back(server: str) -> None:
    client = sdk(server)
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    for seed in range(4):
        completion = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Weather,
                                                   seed=seed, temperature=1.0, max_tokens=120)
        assert isinstance(completion.choices[0].message.parsed, Weather)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, max_tokens=120, seed=9, temperature=1.0,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert chunks[-1].choices[0].finish_reason == "stop"
    choice = client.completions.create(model=MODEL, prompt="Is it raining?", max_tokens=10, temperature=1.0, n=4,
                                       seed=1, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert {c.text for c in choice.choices} <= {"yes", "no"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "sphere"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": "json"}, "response_format"),
    ({"structured_outputs": {"regex": "("}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs"),
])
def test_constraints_that_cannot_be_held_are_400s(server: str, fields: dict, param: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
