"""The embedded default (config/pitstop.yaml, model folders and storage moved into a temporary
directory; the `embedded` fixture of conftest.py): it builds its two tiny models on first start and
answers the openai SDK on the route group `auto` and on each model, leaving rows in its SQLite file;
the local models score texts, hold to schemas, grammars and forced tool calls, give logprobs and reuse
a conversation's KV, through each API; the README's quickstart runs against it. The same config under
`pitstop serve` (with an engine process, and shut down mid-traffic): test_gateway_embedded_serve.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.gateway.embedded_default import (
    ENCODER_MODEL,
    LOCAL_MODELS,
    NO_EOS,
    embedded_config,  # noqa: F401  (re-exported: tests/agent_sessions/test_agent_loop_e2e.py imports it from here)
)
from tests.gateway.harness import REPO_ROOT, Gateway, read_outcomes


def test_first_start_builds_the_tiny_models(embedded: tuple[Gateway, Path]) -> None:
    _, root = embedded
    for name in LOCAL_MODELS:
        assert (root / "models" / name / "config.json").exists()
        assert (root / "models" / name / "tokenizer.json").exists()


def test_models_are_the_route_group_and_the_local_models(embedded: tuple[Gateway, Path]) -> None:
    gw, _ = embedded
    with gw.openai() as client:
        assert [m.id for m in client.models.list().data] == ["auto", *LOCAL_MODELS, ENCODER_MODEL]


def test_the_encoder_embeds_and_reranks_offline(embedded: tuple[Gateway, Path]) -> None:
    gw, _ = embedded
    texts = ["A cat sat on the mat.", "A kitten slept on the rug.", "Interest rates rose again."]
    with gw.openai() as client:
        vectors = [d.embedding for d in client.embeddings.create(model=ENCODER_MODEL, input=texts).data]
    similarity = [[sum(a * b for a, b in zip(u, v, strict=True)) for v in vectors] for u in vectors]
    assert len(vectors[0]) == 384 and similarity[0][1] > similarity[0][2] + 0.3  # it reads meaning
    with gw.http() as http:
        ranked = http.post("/v1/rerank", json={"model": ENCODER_MODEL, "query": "pets sleeping",
                                               "documents": texts[::-1]}).json()
    assert [r["index"] for r in ranked["results"]][-1] == 0  # the rates come last


@pytest.mark.parametrize("model", ["auto", *LOCAL_MODELS])
def test_sdk_on_the_embedded_default(embedded: tuple[Gateway, Path], model: str) -> None:
    gw, root = embedded
    messages = [{"role": "user", "content": "Write about the sea."}]
    with gw.openai() as client:
        whole = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=6,
                                                                extra_headers={"x-session-id": "embedded-1"},
                                                                extra_body=NO_EOS)
        answer = whole.parse()
        stream = client.chat.completions.with_raw_response.create(model=model, messages=messages, max_tokens=6,
                                                                 stream=True, stream_options={"include_usage": True},
                                                                 extra_body=NO_EOS)
        chunks = list(stream.parse())
        legacy = client.completions.create(model=model, prompt="The sea", max_tokens=4, extra_body=NO_EOS)
    chosen = whole.headers["x-pitstop-model"]
    assert chosen in LOCAL_MODELS and (chosen == model or model == "auto")
    assert answer.usage is not None and answer.usage.completion_tokens == 6 and answer.usage.prompt_tokens > 0
    assert isinstance(answer.choices[0].message.content, str) and answer.choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert legacy.usage is not None and legacy.usage.completion_tokens == 4
    gw.flush()
    rows = {r["request_id"]: r for r in read_outcomes(f"sqlite:///{root / 'pitstop.db'}")}
    row = rows[whole.headers["x-pitstop-request-id"]]
    assert (row["model"], row["session_id"], row["status"], row["completion_tokens"]) == (chosen, "embedded-1",
                                                                                          "ok", 6)
    assert row["cost_usd"] > 0 and row["deployment"] == f"{chosen}#0"
    assert row["route_group"] == ("auto" if model == "auto" else None)
    if model == "auto":
        assert (row["router_name"], set(row["router_scores"])) == ("tier-prior", set(LOCAL_MODELS))
    streamed = rows[stream.headers["x-pitstop-request-id"]]
    assert streamed["stream"] and streamed["ttft_s"] is not None and streamed["completion_tokens"] == 6


def test_scoring_texts_through_the_gateway(embedded: tuple[Gateway, Path]) -> None:
    """lm-evaluation-harness's loglikelihood request (a batch of token lists, echo, logprobs,
    max_tokens 0) on a local model through the gateway: transformers' log-probabilities come back for
    each, and the outcome row counts every prompt and no completion tokens."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    gw, root = embedded
    model_dir = root / "models" / "tiny-small"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = [tokenizer.encode(text, add_special_tokens=False)
             for text in ("The tide comes in twice a day", "The moon pulls the sea")]
    with gw.openai() as client:
        raw = client.completions.with_raw_response.create(model="tiny-small", prompt=batch, echo=True, logprobs=1,
                                                          max_tokens=0, temperature=0, frequency_penalty=0.5)
    answer = raw.parse()
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for choice, ids in zip(sorted(answer.choices, key=lambda c: c.index), batch, strict=True):
        with torch.inference_mode():
            expected = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], dim=-1)
        found = choice.logprobs.token_logprobs
        assert found[0] is None and len(found) == len(ids)
        assert found[1:] == pytest.approx(expected[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist(),
                                          abs=1e-3)
    prompt_tokens = sum(map(len, batch))
    assert answer.usage.completion_tokens == 0 and answer.usage.prompt_tokens == prompt_tokens
    gw.flush()
    rows = {r["request_id"]: r for r in read_outcomes(f"sqlite:///{root / 'pitstop.db'}")}
    row = rows[raw.headers["x-pitstop-request-id"]]
    assert (row["status"], row["completion_tokens"], row["prompt_tokens"]) == ("ok", 0, prompt_tokens)


def test_structured_outputs_from_a_local_model_through_each_api(embedded: tuple[Gateway, Path]) -> None:
    """A random tiny model held to a schema answers the SDKs' parse helpers, on chat completions and on
    the Responses API (its `text.format` becomes the engine's response_format)."""
    import pydantic

    class Verdict(pydantic.BaseModel):
        answer: bool
        confidence: int = pydantic.Field(ge=0, le=100)

    gw, _ = embedded
    with gw.openai() as client:
        chat = client.chat.completions.parse(model="tiny-small", messages=[{"role": "user", "content": "Sure?"}],
                                             response_format=Verdict, max_tokens=40, seed=3)
        response = client.responses.parse(model="tiny-large", input="Sure?", text_format=Verdict,
                                          max_output_tokens=40)
    assert isinstance(chat.choices[0].message.parsed, Verdict)
    assert isinstance(response.output_parsed, Verdict)


def test_the_readme_quickstart_runs_against_the_embedded_default(embedded: tuple[Gateway, Path]) -> None:
    """The README's Python quickstart, as written, on `make serve`'s embedded default (its address swapped
    for this gateway's): a README whose example broke would fail here."""
    gw, _ = embedded
    section = (REPO_ROOT / "README.md").read_text().split("## Quickstart", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8000" in code
    result = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8000", gw.url)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'message'" in result.stdout and "city=" in result.stdout  # the conversation's items, the parsed Weather


def test_a_conversation_on_a_local_model_reuses_its_kv_from_the_first_turn(embedded: tuple[Gateway, Path]) -> None:
    """A conversation is an agent session from its first turn, kept on the engine instance that holds its
    KV: the second turn's prompt, which starts with the first turn's, is served from the prefix cache."""
    gw, root = embedded
    opening = " ".join(f"The sea was calm on day {n} of the voyage." for n in range(12))  # several KV blocks
    with gw.openai() as client:
        conversation = client.conversations.create(items=[{"role": "system", "content": "You keep a log."}])
        first = client.responses.create(model="tiny-small", conversation=conversation.id, input=opening,
                                        max_output_tokens=8)
        second = client.responses.create(model="tiny-small", conversation=conversation.id, input="And then?",
                                         max_output_tokens=8)
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # The first turn's prompt (its whole blocks of 16 tokens) came from the cache.
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens // 16 * 16 > 0
    gw.flush()
    rows = {r["request_id"]: r for r in read_outcomes(f"sqlite:///{root / 'pitstop.db'}")}
    turns = [rows["req-" + r.id.removeprefix("resp_")] for r in (first, second)]
    assert [(r["session_id"], r["turn"]) for r in turns] == [(conversation.id, 1), (conversation.id, 2)]


def test_a_forced_tool_call_from_a_local_model_through_each_api(embedded: tuple[Gateway, Path]) -> None:
    """Claude-style forced tool use (tool_choice by name) on a random tiny model: a tool_use block whose
    input its schema accepts, stop_reason tool_use, whole and streamed; and the Responses API's
    function_call item."""
    import anthropic
    import jsonschema

    schema = {"type": "object", "properties": {"path": {"type": "string", "maxLength": 12},
                                               "lines": {"type": "integer", "minimum": 1, "maximum": 99}},
              "required": ["path", "lines"], "additionalProperties": False}
    gw, _ = embedded
    claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0, timeout=60)
    ask = {"model": "tiny-small", "max_tokens": 60, "messages": [{"role": "user", "content": "Show me main.py"}],
           "tools": [{"name": "read_file", "input_schema": schema}], "tool_choice": {"type": "tool", "name": "read_file"}}
    answer = claude.messages.create(**ask)
    (block,) = answer.content
    assert (block.type, block.name, answer.stop_reason) == ("tool_use", "read_file", "tool_use")
    jsonschema.validate(block.input, schema)
    with claude.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[0].type == "tool_use"
    jsonschema.validate(streamed.content[0].input, schema)
    with gw.openai() as client:  # the Responses API: a function_call item
        response = client.responses.create(
            model="tiny-large", input="Show me main.py", max_output_tokens=60,
            tools=[{"type": "function", "name": "read_file", "parameters": schema}],
            tool_choice={"type": "function", "name": "read_file"})
    (call,) = response.output
    assert (call.type, call.name) == ("function_call", "read_file")
    jsonschema.validate(json.loads(call.arguments), schema)


def test_the_responses_api_gives_the_output_texts_logprobs(embedded: tuple[Gateway, Path]) -> None:
    """`include: ["message.output_text.logprobs"]` with `top_logprobs`, as OpenAI: each output token with its
    log-probability and likeliest alternatives, whole and streamed (the deltas carry their tokens')."""
    gw, _ = embedded
    ask = {"model": "tiny-small", "input": "Say something", "max_output_tokens": 12, "temperature": 0,
           "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    with gw.openai() as client:
        whole = client.responses.create(**ask)
        events = list(client.responses.create(**ask, stream=True))
        streamed = events[-1].response  # type: ignore[union-attr]  # completed, or incomplete at max_output_tokens
        plain = client.responses.create(**{k: v for k, v in ask.items() if k not in ("include", "top_logprobs")})
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(**{**ask, "top_logprobs": 21})
    part = whole.output[0].content[0]
    assert whole.usage is not None and len(part.logprobs or []) == whole.usage.output_tokens > 0
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in part.logprobs or [])  # type: ignore[union-attr]
    deltas = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs or []]
    assert [lp.token for lp in deltas] == [lp.token for lp in streamed.output[0].content[0].logprobs or []]  # type: ignore[union-attr]
    assert [lp.token for lp in deltas] == [lp.token for lp in part.logprobs or []]  # greedy: the same tokens
    assert streamed.output[0].content[0].text == part.text  # type: ignore[union-attr]
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]
    assert refused.value.body["param"] == "top_logprobs"  # type: ignore[index]


def test_a_custom_tools_grammar_holds_a_local_models_input(embedded: tuple[Gateway, Path]) -> None:
    """Codex's kind of tool (free text held to a Lark grammar) told to a random tiny model: the
    custom_tool_call's input is one the grammar accepts, whole and streamed, from each local model."""
    import re

    patch = {"type": "custom", "name": "edit", "description": "Edits a file",
             "format": {"type": "grammar", "syntax": "lark",
                        "definition": 'start: "*** " OP " " PATH\nOP: "Add" | "Delete"\nPATH: /[a-z]{1,8}\\.py/'}}
    accepted = re.compile(r"\*\*\* (Add|Delete) [a-z]{1,8}\.py")
    gw, _ = embedded
    with gw.openai() as client:
        for model in ("tiny-small", "tiny-large"):
            ask = {"model": model, "input": "Remove the old module", "max_output_tokens": 40, "tools": [patch],
                   "tool_choice": {"type": "custom", "name": "edit"}}
            whole = client.responses.create(**ask)
            with client.responses.stream(**ask) as stream:
                streamed = stream.get_final_response()
            for response in (whole, streamed):
                (call,) = response.output
                assert (call.type, call.name) == ("custom_tool_call", "edit")
                assert accepted.fullmatch(call.input), call.input
