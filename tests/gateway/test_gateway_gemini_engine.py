"""Google's Gemini API against a real model: a tiny Pitstop engine in the gateway's process answers the
`google-genai` SDK's generateContent (greedy, two candidates, logprobs), its stream, countTokens and
embedContent exactly as it answers the same chat completion and embeddings through the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google import genai
from google.genai import types

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import Gateway, gateway_config, running_gateway

ASK = "Tell me about foxes"
SYSTEM = "be brief"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("gemini-engine")
    model_dir = make_tiny_model(root / "tiny", family="qwen3")

    def local(name: str, **info: str) -> dict:
        return {"model_name": name, "model_info": info,
                "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(model_dir), "num_blocks": 64,
                                   "max_model_len": 256}}

    with running_gateway(gateway_config(root, [local("tiny"), local("embedder", mode="embedding")])) as gateway:
        yield gateway


def gemini(gw: Gateway) -> genai.Client:
    return genai.Client(api_key="none", http_options=types.HttpOptions(
        base_url=gw.url, retry_options=types.HttpRetryOptions(attempts=1)))


def test_generate_content_answers_as_the_chat_does(gw: Gateway) -> None:
    client = gemini(gw)
    response = client.models.generate_content(model="tiny", contents=ASK, config=types.GenerateContentConfig(
        system_instruction=SYSTEM, temperature=0, max_output_tokens=8, candidate_count=2, response_logprobs=True,
        logprobs=2))
    streamed = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model="tiny", contents=ASK, config=types.GenerateContentConfig(system_instruction=SYSTEM, temperature=0,
                                                                        max_output_tokens=8)))
    counted = client.models.count_tokens(model="tiny", contents=[types.Content(role="user", parts=[
        types.Part.from_text(text=ASK)])])
    with gw.openai() as openai_client:
        chat = openai_client.chat.completions.create(
            model="tiny", messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}],
            temperature=0, max_tokens=8, n=2, logprobs=True, top_logprobs=2)
        plain = openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": ASK}],
                                                      max_tokens=1)
    candidates = response.candidates or []
    assert len(candidates) == 2 and chat.choices[0].message.content
    assert [c.content.parts[0].text for c in candidates] == [c.message.content for c in chat.choices]  # type: ignore[union-attr, index]
    assert streamed == chat.choices[0].message.content
    finish = {"length": types.FinishReason.MAX_TOKENS, "stop": types.FinishReason.STOP}
    assert [c.finish_reason for c in candidates] == [finish[c.finish_reason] for c in chat.choices]
    chosen = candidates[0].logprobs_result.chosen_candidates  # type: ignore[union-attr]
    expected = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [(t.token, t.log_probability) for t in chosen] == [(t.token, t.logprob) for t in expected]  # type: ignore[union-attr]
    top = candidates[0].logprobs_result.top_candidates[0].candidates  # type: ignore[union-attr, index]
    assert len(chosen) == 8 and len(top) == 2  # type: ignore[arg-type]
    assert [t.token for t in top] == [t.token for t in expected[0].top_logprobs]  # type: ignore[union-attr]
    usage = response.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count) == (  # type: ignore[union-attr]
        chat.usage.prompt_tokens, chat.usage.completion_tokens)  # type: ignore[union-attr]
    assert counted.total_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]


def test_embed_content_is_the_engines_embedding(gw: Gateway) -> None:
    texts = ["The fox is in the den.", "Where is it?"]
    client = gemini(gw)
    embedded = client.models.embed_content(model="embedder", contents=texts)
    with gw.openai() as openai_client:
        expected = openai_client.embeddings.create(model="embedder", input=texts)
    assert [e.values for e in embedded.embeddings] == [item.embedding for item in expected.data]  # type: ignore[union-attr]
