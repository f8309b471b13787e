"""Claude on Amazon Bedrock through the gateway, over real sockets: a litellm `bedrock/...claude...` deployment
whose `api_base` is a mock of Bedrock's Converse API (tests/gateway/bedrock_upstream.py; litellm signs with
made-up keys) gets the client's `cache_control` breakpoints as Converse `cachePoint`s, `thinking` in
`additionalModelRequestFields` and the thinking blocks sent back as `reasoningContent` with their signature,
from the anthropic SDK on /v1/messages and the openai SDK on chat completions; the client gets Bedrock's
signed thinking and its cache tokens, priced on the outcome row. A Bedrock model that is not Claude (Nova)
gets none of those fields. Vertex AI's Claude is chosen by the same rule (its calls need Google credentials,
so only the rule is tested here)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from gateway.anthropic_fields import takes_anthropic_fields
from tests.engine.serving import serve_in_thread
from tests.gateway.bedrock_upstream import TEXT, THOUGHT, BedrockUpstream
from tests.gateway.harness import Gateway, gateway_config, running_gateway

PRICES = {"input_cost_per_token": 3e-6, "output_cost_per_token": 15e-6, "cache_read_input_token_cost": 3e-7,
          "cache_creation_input_token_cost": 3.75e-6}
# The mock's usage: 100 uncached, 600 read, 300 written, 7 out.
BILLED = 100 * 3e-6 + 600 * 3e-7 + 300 * 3.75e-6 + 7 * 15e-6
EPHEMERAL = {"type": "ephemeral"}
AWS = {"aws_access_key_id": "AKIAPITSTOPTEST", "aws_secret_access_key": "not-a-secret", "aws_region_name": "us-east-1"}
CLAUDE_ID = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[BedrockUpstream, str]]:
    upstream = BedrockUpstream()
    with serve_in_thread(upstream.app()) as url:
        yield upstream, url


@pytest.fixture(scope="module")
def gw(mock: tuple[BedrockUpstream, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    models = [{"model_name": name, "litellm_params": {"model": f"bedrock/{model_id}", "api_base": mock[1], **AWS},
               "model_info": {**PRICES, "tier": "strong"}}
              for name, model_id in (("claude-bedrock", CLAUDE_ID), ("nova", "us.amazon.nova-pro-v1:0"))]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("bedrock"), models)) as gateway:
        yield gateway


def test_a_thinking_turn_with_cache_breakpoints_reaches_claude_on_bedrock(
        gw: Gateway, mock: tuple[BedrockUpstream, str]) -> None:
    upstream = mock[0]
    system = [{"type": "text", "text": "A long, stable preamble.", "cache_control": EPHEMERAL}]
    with anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0, timeout=30) as client:
        first = client.messages.create(
            model="claude-bedrock", max_tokens=4000, system=system,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=[{"role": "user", "content": [{"type": "text", "text": "2+2?", "cache_control": EPHEMERAL}]}])
        sent = upstream.last
        second = client.messages.create(
            model="claude-bedrock", max_tokens=4000, system=system,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=[{"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": [b.model_dump() for b in first.content]},  # type: ignore[misc]
                      {"role": "user", "content": "And 3+3?"}])
        resent = upstream.last
    assert upstream.paths[-1] == f"/model/{CLAUDE_ID}/converse"
    # Bedrock's signed thinking comes back as Anthropic's thinking block, then the text.
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking == THOUGHT
    assert thinking.signature == f"bedrock-sig-{len(upstream.bodies) - 1}"
    assert first.content[-1].type == "text" and first.content[-1].text == TEXT  # type: ignore[union-attr]
    # What Bedrock got: a cachePoint after each marked block, thinking in the model's own fields.
    assert sent["system"] == [{"text": "A long, stable preamble."}, {"cachePoint": {"type": "default"}}]
    assert sent["messages"][-1]["content"] == [{"text": "2+2?"}, {"cachePoint": {"type": "default"}}]
    assert sent["additionalModelRequestFields"]["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    # The second turn sends the signed thinking back as reasoningContent, before the text.
    assistant = resent["messages"][1]["content"]
    assert assistant[0] == {"reasoningContent": {"reasoningText": {"text": THOUGHT,
                                                                   "signature": thinking.signature}}}
    assert assistant[-1] == {"text": TEXT}
    # Cache tokens as Bedrock reports them, and priced.
    assert (second.usage.cache_read_input_tokens, second.usage.cache_creation_input_tokens) == (600, 300)
    row = gw.row(second._request_id or "")
    assert row["model"] == "claude-bedrock" and row["cost_usd"] == pytest.approx(BILLED, rel=1e-9)


@pytest.mark.parametrize(("model", "reaches"), [("claude-bedrock", True), ("nova", False)])
def test_chat_completions_fields_reach_claude_on_bedrock_only(
        gw: Gateway, mock: tuple[BedrockUpstream, str], model: str, reaches: bool) -> None:
    with gw.openai() as client:
        answer = client.chat.completions.create(
            model=model, max_tokens=4000, extra_body={"thinking": {"type": "enabled", "budget_tokens": 1500}},
            messages=[{"role": "system", "content": [{"type": "text", "text": "stable",  # type: ignore[typeddict-unknown-key]
                                                      "cache_control": EPHEMERAL}]},
                      {"role": "user", "content": "2+2?"}])
    sent = mock[0].last
    marked = {"cachePoint": {"type": "default"}} in sent["system"]
    thinking = "thinking" in (sent.get("additionalModelRequestFields") or {})
    assert (marked, thinking) == (reaches, reaches)
    assert answer.choices[0].message.content == TEXT
    blocks = (answer.choices[0].message.model_extra or {}).get("thinking_blocks")
    assert bool(blocks) == reaches


@pytest.mark.parametrize(("model", "takes"), [
    ("anthropic/claude-sonnet-4-5", True), ("bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0", True),
    ("bedrock/converse/anthropic.claude-3-7-sonnet-20250219-v1:0", True), ("vertex_ai/claude-sonnet-4-5@20250929", True),
    ("bedrock/us.amazon.nova-pro-v1:0", False), ("vertex_ai/gemini-2.5-pro", False), ("openai/claude-proxy", False),
    ("hosted_vllm/claude-distill", False)])
def test_which_deployments_take_anthropic_fields(model: str, takes: bool) -> None:
    assert takes_anthropic_fields(model) is takes
