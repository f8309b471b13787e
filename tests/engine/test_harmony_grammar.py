"""Structured outputs under gpt-oss's Harmony (OutputConstraint.in_harmony_final): the analysis channel is free,
the final message holds the grammar. On the tiny gpt-oss with random weights only the grammar gives the answer
its shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.build import build_engine
from engine.llm_engine import LLMEngine
from engine.server.app import create_app
from engine.structured_output import OutputConstraint, mask_disallowed
from tests.engine.gpt_oss_checkpoints import save_serving_gpt_oss
from tests.engine.serving import sdk, serve_in_thread

SCHEMA = {"type": "object", "properties": {"rain": {"type": "boolean"}, "wind": {"enum": ["calm", "storm"]}},
          "required": ["rain", "wind"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
FINAL = "<|start|>assistant<|channel|>final<|message|>"
MESSAGES = [{"role": "user", "content": "Will it rain in Oslo?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_serving_gpt_oss(tmp_path_factory.mktemp("harmony_grammar") / "tiny-gpt-oss")


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> LLMEngine:
    return build_engine(model_dir, num_blocks=64, block_size=16, device="cpu").engine


def _valid(text: str) -> bool:
    answer = json.loads(text)
    return set(answer) == {"rain", "wind"} and isinstance(answer["rain"], bool) and answer["wind"] in ("calm", "storm")


def test_the_grammar_holds_the_final_message_and_not_the_analysis(engine: LLMEngine) -> None:
    """Masks against hand-built expectations: while thinking nearly every token is allowed (the special ones but
    `<|end|>` aside); after the final header exactly the plain schema's first tokens; `<|return|>` only once the
    JSON is whole; a wrong answer is refused; the answer may also come without thinking."""
    tokenizer = engine.tokenizer
    assert tokenizer is not None
    compiler, schema = engine.grammars(), OutputConstraint.json_schema(SCHEMA)
    harmony = schema.in_harmony_final()
    end, ret = tokenizer.token_to_id("<|end|>"), tokenizer.token_to_id("<|return|>")

    def masked(matcher: object) -> torch.Tensor:
        logits = torch.zeros(1, compiler.vocab_size)
        mask_disallowed(logits, [matcher])  # type: ignore[list-item]
        return torch.isinf(logits[0])

    def fed(text: str) -> object:
        matcher = compiler.matcher(harmony)
        ids = tokenizer.encode(text)  # type: ignore[union-attr]
        assert all(matcher.consume(t) for t in ids), text
        return matcher

    plain = masked(compiler.matcher(schema))
    thinking = masked(fed("<|channel|>analysis<|message|>Let me think"))
    specials = {tokenizer.token_to_id(name) for name in tokenizer.added_tokens}  # type: ignore[attr-defined]
    barred = set(thinking.nonzero().flatten().tolist())
    assert barred & specials == specials - {end}  # free text (no special token) up to its `<|end|>` ...
    assert all(tokenizer.decode([t]) == "\ufffd" for t in barred - specials)  # ... but bytes no UTF-8 starts with
    after = masked(fed("<|channel|>analysis<|message|>Rain?<|end|>" + FINAL))
    assert torch.equal(after, plain)  # the schema, from its first token
    direct = masked(fed("<|channel|>final<|message|>"))  # no analysis message
    assert torch.equal(direct, plain)
    half = masked(fed(FINAL.removeprefix("<|start|>assistant") + '{"rain":true'))
    assert half[ret]
    whole = fed(FINAL.removeprefix("<|start|>assistant") + '{"rain":true,"wind":"calm"}')
    assert not masked(whole)[ret] and masked(whole).sum() == compiler.vocab_size - 1  # only <|return|>
    wrong = fed("<|channel|>analysis<|message|>Hmm<|end|>" + FINAL)
    assert not all(wrong.consume(t) for t in tokenizer.encode('{"rain":5'))  # type: ignore[attr-defined]


def test_a_chat_with_response_format_answers_json_in_content_whole_and_streamed(engine: LLMEngine,
                                                                             model_dir: Path) -> None:
    """The served tiny gpt-oss (Harmony by its model type) with the openai SDK: the content parses and fits the
    schema, the thinking (as much as the random model writes: `<|end|>` is favoured so thoughts stay short)
    comes back as reasoning_content, whole and streamed; vLLM's structured_outputs too."""
    tokenizer = engine.tokenizer
    assert tokenizer is not None
    # Short thoughts, and "final" more often than another analysis header: the model's window is 256 tokens.
    bias = {str(tokenizer.token_to_id("<|end|>")): 6, str(tokenizer.token_to_id("f")): 1}
    app = create_app(build_engine(model_dir, num_blocks=64, block_size=16, device="cpu"), "gpt-oss")
    thoughts = []
    with serve_in_thread(app) as url, sdk(url) as client:
        for seed in range(6):
            whole = client.chat.completions.create(model="gpt-oss", messages=MESSAGES, max_tokens=200, seed=seed,
                                                   response_format=FORMAT, logit_bias=bias)  # type: ignore[arg-type]
            message = whole.choices[0].message
            assert whole.choices[0].finish_reason == "stop" and _valid(message.content or ""), message
            thoughts.append(getattr(message, "reasoning_content", None))
            chunks = list(client.chat.completions.create(
                model="gpt-oss", messages=MESSAGES, max_tokens=200, seed=seed, stream=True,
                response_format=FORMAT, logit_bias=bias))  # type: ignore[arg-type]
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            assert "".join(d.content or "" for d in deltas) == message.content  # same seed, same answer
            streamed = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
            assert streamed == (thoughts[-1] or "")
        plain = client.chat.completions.create(model="gpt-oss", messages=MESSAGES, max_tokens=200, seed=0,
                                               extra_body={"structured_outputs": {"json": SCHEMA}},
                                               logit_bias=bias)  # type: ignore[arg-type]
    assert _valid(plain.choices[0].message.content or "")
    assert any(thoughts) and not all(thoughts), thoughts  # it thought on its analysis channel, or answered at once
    assert all("<|" not in (t or "") and "{" not in (t or "") for t in thoughts)
