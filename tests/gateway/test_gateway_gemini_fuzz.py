"""Fuzz Google's Gemini API on the gateway with hypothesis: near-valid generateContent bodies (contents with
text, inline and file images, function calls and responses; a system instruction, generationConfig, tools and
toolConfig), with fields dropped or replaced by any JSON value, sent to generateContent, streamGenerateContent
(`alt=sse`) and countTokens; embedContent and batchEmbedContents bodies; raw bytes. The gateway must never
answer a 5xx (the upstream is healthy) nor stream a 5xx error, and every error is in Google's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.test_gateway_fuzz import FUZZ, json_values, names, near_valid, raw_bodies, short, texts
from tests.gateway.upstream import UpstreamProcess

GEMINI_FUZZ = settings(FUZZ, max_examples=100)
text_part = st.fixed_dictionaries({"text": texts}, optional={"thought": st.booleans()})
image_part = (st.fixed_dictionaries({"inlineData": st.fixed_dictionaries({"mimeType": st.just("image/png"),
                                                                          "data": st.just("iVBORw0KGgo=")})})
              | st.fixed_dictionaries({"fileData": st.fixed_dictionaries({"fileUri": st.just("https://x.test/a.png")},
                                                                         optional={"mimeType": st.just("image/png")})}))
call_part = st.fixed_dictionaries({"functionCall": st.fixed_dictionaries(
    {"name": names}, optional={"args": st.just({"city": "Paris"}) | json_values, "id": names})})
response_part = st.fixed_dictionaries({"functionResponse": st.fixed_dictionaries(  # with an id: it answers a call
    {"name": names, "id": names}, optional={"response": st.just({"result": "sunny"}) | json_values})})
content = (st.fixed_dictionaries({"parts": st.lists(text_part | image_part | response_part, min_size=1, max_size=3)},
                                 optional={"role": st.sampled_from(["user", "function"])})
           | st.fixed_dictionaries({"role": st.just("model"),
                                    "parts": st.lists(text_part | call_part, min_size=1, max_size=3)}))
schema = st.recursive(st.fixed_dictionaries({"type": st.sampled_from(["STRING", "INTEGER", "NUMBER", "BOOLEAN"])},
                                            optional={"nullable": st.booleans(), "description": texts}),
                      lambda inner: st.fixed_dictionaries({"type": st.just("ARRAY"), "items": inner})
                      | st.fixed_dictionaries({"type": st.just("OBJECT"),
                                               "properties": st.dictionaries(names, inner, max_size=2)}), max_leaves=4)
CONFIG = {"temperature": st.floats(0, 2), "topP": st.floats(0.01, 1), "topK": st.integers(1, 50),
          "maxOutputTokens": st.integers(1, 40), "stopSequences": st.lists(short, max_size=3),
          "candidateCount": st.just(1), "seed": st.integers(0, 2**31), "responseMimeType": st.sampled_from(
              ["text/plain", "application/json"]), "responseSchema": schema,
          "thinkingConfig": st.fixed_dictionaries({}, optional={"includeThoughts": st.booleans(),
                                                                "thinkingBudget": st.integers(-1, 100)})}
TOOL = st.fixed_dictionaries({"functionDeclarations": st.lists(st.fixed_dictionaries(
    {"name": names}, optional={"description": texts, "parameters": schema}), min_size=1, max_size=2)})
GEMINI = {"contents": st.lists(content, min_size=1, max_size=3),
          "systemInstruction": st.fixed_dictionaries({"parts": st.lists(text_part, min_size=1, max_size=2)}),
          "generationConfig": st.fixed_dictionaries({}, optional=CONFIG), "tools": st.lists(TOOL, min_size=1, max_size=2),
          "toolConfig": st.fixed_dictionaries({"functionCallingConfig": st.fixed_dictionaries(
              {"mode": st.sampled_from(["AUTO", "ANY", "NONE", "VALIDATED"])})}),
          "safetySettings": st.just([]), "session_id": short}
gemini_bodies = near_valid({"contents": GEMINI["contents"]}, GEMINI).map(
    lambda body: {k: v for k, v in body.items() if k not in ("model", "stream_options")})
embed_content = st.fixed_dictionaries({"parts": st.lists(st.fixed_dictionaries({"text": texts}), min_size=1,
                                                         max_size=2)})
embed_bodies = near_valid({"content": embed_content}, {"outputDimensionality": st.integers(1, 8)})
batch_bodies = near_valid({"requests": st.lists(st.fixed_dictionaries({"content": embed_content},
                                                                      optional={"model": st.just("models/emb")}),
                                                min_size=1, max_size=3)}, {})
METHODS = ["generateContent", "streamGenerateContent?alt=sse", "countTokens"]


@pytest.fixture(scope="module")
def http(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    a, _ = upstream_processes
    embedder = model_entry("emb", a.api_base, provider="hosted_vllm")
    embedder["model_info"]["mode"] = "embedding"
    raw = gateway_config(tmp_path_factory.mktemp("gemini-fuzz"), [model_entry("up", a.api_base), embedder],
                         server={"max_body_bytes": 20_000})
    with running_gateway(raw) as gateway, Gateway.http(gateway) as client:
        yield client


def check(response: httpx.Response) -> None:
    event(f"status {response.status_code}")  # `pytest --hypothesis-show-statistics` shows the mix
    assert response.status_code < 500, response.text[:500]
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: "):
                error = json.loads(line[6:]).get("error")
                assert error is None or error["code"] < 500, line
        return
    body = response.json()
    if response.status_code >= 400:
        assert set(body["error"]) == {"code", "message", "status", "details"}
        assert body["error"]["code"] == response.status_code and body["error"]["status"].isupper()


@GEMINI_FUZZ
@given(body=gemini_bodies, method=st.sampled_from(METHODS), model=st.sampled_from(["up", "nope"]))
def test_fuzz_generate_content(http: httpx.Client, body: dict, method: str, model: str) -> None:
    check(http.post(f"/v1beta/models/{model}:{method}", content=json.dumps(body).encode()))


@GEMINI_FUZZ
@given(body=embed_bodies | batch_bodies, batch=st.booleans())
def test_fuzz_embed_content(http: httpx.Client, body: dict, batch: bool) -> None:
    check(http.post(f"/v1/models/emb:{'batchEmbedContents' if batch else 'embedContent'}",
                    content=json.dumps(body).encode()))


@GEMINI_FUZZ
@given(body=raw_bodies, method=st.sampled_from([*METHODS, "embedContent", "batchEmbedContents"]))
def test_fuzz_raw_bodies(http: httpx.Client, body: bytes, method: str) -> None:
    check(http.post(f"/v1beta/models/up:{method}", content=body, headers={"content-type": "application/json"}))
