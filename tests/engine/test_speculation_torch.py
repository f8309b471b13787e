"""Speculative decoding on the torch runner and the tiny random model: the same tokens as plain decoding
(greedy, seeded sampling, penalties, log-probabilities), and served over HTTP with stop strings and
streaming. `logit_bias` holds the random model to a four-token alphabet, so its answers repeat and
n-gram drafts get accepted."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.build import build_engine
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.server.app import create_app
from engine.structured_output import OutputConstraint
from engine.tokenizer import Tokenizer
from engine.torch_runner import TorchModelRunner
from tests.engine.serving import serve_in_thread

ALPHABET = (300, 301, 302, 303)
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "required": ["city", "days"], "additionalProperties": False,
    "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"enum": [1, 2, 3]}}}}}
BIAS = tuple((t, 30.0) for t in ALPHABET)


def generate(model_dir: Path, speculative: SpeculativeConfig | None, params: SamplingParams,
             num_blocks: int = 256, tokenizer: Tokenizer | None = None, requests: int = 5,
             ) -> tuple[dict[str, list[RequestOutput]], LLMEngine]:
    config = EngineConfig(block_size=4, num_blocks=num_blocks, max_model_len=512, max_num_batched_tokens=256,
                          speculative=speculative)
    engine = LLMEngine(config, TorchModelRunner(model_dir, num_blocks, 4), tokenizer=tokenizer)
    rng = random.Random(0)
    for i in range(requests):
        engine.add_request(f"r{i}", [rng.randrange(1000) for _ in range(rng.randrange(4, 50))], params)
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs, engine


def tokens(outputs: dict[str, list[RequestOutput]]) -> dict[str, list[int]]:
    return {rid: [t for out in outs for t in out.new_token_ids] for rid, outs in outputs.items()}


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=80, logit_bias=BIAS, ignore_eos=True),
    SamplingParams(temperature=0.9, top_p=0.95, seed=11, max_tokens=80, logit_bias=BIAS, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=80, logit_bias=BIAS, repetition_penalty=1.2, presence_penalty=0.3,
                   frequency_penalty=0.2, min_tokens=40),
], ids=["greedy", "seeded", "penalties"])
def test_speculation_gives_plain_decodings_tokens(tiny_model_dir: Path, params: SamplingParams) -> None:
    plain, plain_engine = generate(tiny_model_dir, None, params)
    fast, engine = generate(tiny_model_dir, SpeculativeConfig(num_speculative_tokens=4), params)
    assert tokens(fast) == tokens(plain)
    spec = engine.stats().spec
    assert spec.accepted_tokens > 0, spec
    assert engine.num_steps < plain_engine.num_steps
    assert any(len(out.new_token_ids) > 1 for outs in fast.values() for out in outs)  # steps that yield several


def test_log_probabilities_of_accepted_tokens_are_plain_decodings(tiny_model_dir: Path) -> None:
    params = SamplingParams(temperature=0, max_tokens=40, logit_bias=BIAS, logprobs=2, ignore_eos=True)
    plain, _ = generate(tiny_model_dir, None, params)
    fast, engine = generate(tiny_model_dir, SpeculativeConfig(), params)
    assert engine.stats().spec.accepted_tokens > 0
    for rid, outs in plain.items():
        expected = [lp for out in outs for lp in out.logprobs or ()]
        got = [lp for out in fast[rid] for lp in out.logprobs or ()]
        assert len(got) == len(expected) == 40
        for a, b in zip(got, expected, strict=True):
            assert a.top_ids == b.top_ids and a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert a.top_logprobs == pytest.approx(b.top_logprobs, abs=1e-4)


def test_speculation_under_memory_pressure(tiny_model_dir: Path) -> None:
    """Few blocks: requests are preempted and recomputed, drafts find no free block at times."""
    params = SamplingParams(temperature=0, max_tokens=60, logit_bias=BIAS, ignore_eos=True)
    plain, _ = generate(tiny_model_dir, None, params, num_blocks=48)
    fast, engine = generate(tiny_model_dir, SpeculativeConfig(num_speculative_tokens=6), params, num_blocks=48)
    assert tokens(fast) == tokens(plain)
    assert engine.stats().num_preemptions > 0 and engine.stats().blocks.used == 0


ROWS = {"type": "object", "required": ["rows"], "additionalProperties": False, "properties": {"rows": {
    "type": "array", "minItems": 3, "maxItems": 5, "items": {
        "type": "object", "required": ["name", "city"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "maxLength": 5}, "city": {"type": "string", "maxLength": 5}}}}}}


@pytest.mark.parametrize("constraint", [
    OutputConstraint.json_schema(ROWS),
    OutputConstraint.regex(r"(the cat sat on the mat\. ){6}", "structured_outputs.regex"),
], ids=["json_schema", "regex"])
def test_answers_held_to_a_grammar_are_drafted_and_match(tiny_model_dir: Path, constraint: OutputConstraint) -> None:
    """Drafts the grammar allows are checked, each row masked as the grammar stands after the drafts
    before it: the answers are plain decoding's, seeded and greedy."""
    tokenizer = Tokenizer(tiny_model_dir)
    for params in (SamplingParams(temperature=1.0, seed=4, max_tokens=200, constraint=constraint),
                   SamplingParams(temperature=0, max_tokens=200, constraint=constraint)):
        plain, _ = generate(tiny_model_dir, None, params, tokenizer=tokenizer)
        fast, engine = generate(tiny_model_dir, SpeculativeConfig(), params, tokenizer=tokenizer)
        assert tokens(fast) == tokens(plain)
        assert engine.stats().spec.accepted_tokens > 0
        for outs in fast.values():
            text = "".join(out.text_delta for out in outs)
            assert outs[-1].finish_reason == "stop", text
            if constraint.kind == "json_schema":
                assert 3 <= len(json.loads(text)["rows"]) <= 5
            else:
                assert text == "the cat sat on the mat. " * 6


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[tuple[str, str]]:
    def app(speculative: SpeculativeConfig | None):
        engine = build_engine(tiny_model_dir, num_blocks=256, block_size=16, max_model_len=512, max_num_seqs=8,
                              speculative=speculative)
        return create_app(engine, "tiny")

    with serve_in_thread(app(None)) as plain, serve_in_thread(app(SpeculativeConfig())) as fast:
        yield plain, fast


def test_served_answers_with_stop_strings_and_streaming_match(servers: tuple[str, str], tiny_model_dir: Path) -> None:
    plain_url, fast_url = servers
    stop = Tokenizer(tiny_model_dir).decode([ALPHABET[2], ALPHABET[1]]).strip()
    bias = {str(t): 30 for t in ALPHABET}
    asks = [
        {"prompt": "the quick brown fox", "max_tokens": 60, "temperature": 0, "logit_bias": bias},
        {"prompt": "jumps over", "max_tokens": 60, "temperature": 0, "logit_bias": bias, "stop": [stop]},
        {"prompt": "the lazy dog", "max_tokens": 60, "temperature": 0.8, "seed": 5, "logit_bias": bias},
    ]
    answers, calls = {}, {}
    for name, url in (("plain", plain_url), ("fast", fast_url)):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        whole = [client.completions.create(model="tiny", **ask) for ask in asks]
        streamed = ["".join(c.choices[0].text for c in client.completions.create(model="tiny", stream=True, **ask)
                            if c.choices) for ask in asks]
        answers[name] = ([(a.choices[0].text, a.choices[0].finish_reason, a.usage.completion_tokens) for a in whole],
                         streamed)
        # A forced tool call: the arguments held to the tool's schema, drafted where the schema allows.
        chat = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Weather in Paris, Paris, Paris?"}], tools=[TOOL],
            tool_choice="required", parallel_tool_calls=False, max_tokens=120, temperature=0)
        calls[name] = [(c.function.name, c.function.arguments) for c in chat.choices[0].message.tool_calls or ()]
    assert answers["fast"] == answers["plain"]
    assert calls["fast"] == calls["plain"] and calls["fast"] and calls["fast"][0][0] == "weather"
    assert set(json.loads(calls["fast"][0][1])) == {"city", "days"}
    whole, streamed = answers["fast"]
    assert [text for text, _, _ in whole] == streamed
    assert whole[1][1] == "stop" and stop not in whole[1][0]
    metrics = httpx.get(f"{fast_url}/metrics").text
    accepted = next(line for line in metrics.splitlines()
                    if line.startswith("pitstop_engine_spec_decode_accepted_tokens_total"))
    assert float(accepted.split()[-1]) > 0
    assert "pitstop_engine_spec_decode_draft_tokens_total" in metrics
