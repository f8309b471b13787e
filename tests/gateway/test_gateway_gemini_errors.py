"""Google's Gemini API on the gateway: its keys (x-goog-api-key, `?key=`) and their limits, and its errors in
Google's shape (`{"error": {"code", "message", "status"}}`) as the `google-genai` SDK raises them: a bad model,
bad bodies (never a 500, nothing sent upstream), an upstream's failure and a stream that breaks."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from google import genai
from google.genai import errors, types

from storage.keys import KeyStore
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

MASTER = "sk-master-gemini"
HI = {"contents": [{"parts": [{"text": "hi"}]}]}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    embedder = model_entry("emb", a.api_base, provider="hosted_vllm")
    embedder["model_info"]["mode"] = "embedding"
    raw = gateway_config(tmp_path_factory.mktemp("gemini-errors"), [model_entry("up", a.api_base),
                                                                      model_entry("other", b.api_base), embedder],
                         auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw) as gateway:
        yield gateway


def gemini(gw: Gateway, api_key: str = MASTER) -> genai.Client:
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        base_url=gw.url, retry_options=types.HttpRetryOptions(attempts=1)))


def google_error(response: httpx.Response, status: int, name: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (status, name) and error["message"]
    return error


def test_a_key_in_the_header_or_the_query_and_its_limits(gw: Gateway, upstreams: tuple) -> None:
    key_id, secret = KeyStore(gw.storage_url).create("gem", rpm_limit=3, models=["up", "emb"])
    client = gemini(gw, secret)
    answer = client.models.generate_content(model="up", contents="hi")  # x-goog-api-key
    assert answer.text is not None and answer.text.startswith("from-a")
    assert {m.name for m in client.models.list()} == {"models/up", "models/emb"}  # the key's models only
    with gw.http() as http:
        by_query = http.post(f"/v1beta/models/up:generateContent?key={secret}", json=HI)
        assert by_query.status_code == 200 and by_query.headers["x-ratelimit-remaining-requests"] == "1"
        listed = http.get(f"/v1beta/models?key={secret}")
        assert [m["name"] for m in listed.json()["models"]] == ["models/up", "models/emb"]
    with pytest.raises(errors.ClientError) as refused:  # the model the key may not use: before a rate slot
        client.models.generate_content(model="other", contents="hi")
    assert (refused.value.code, refused.value.status) == (403, "PERMISSION_DENIED")
    client.models.embed_content(model="emb", contents="x")  # the third request of the minute
    with pytest.raises(errors.ClientError) as limited:
        client.models.generate_content(model="up", contents="hi")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60  # type: ignore[union-attr]
    assert {r["api_key_id"] for r in gw.rows() if r["status"] == "ok"} >= {key_id}
    assert upstreams[0].stats()["requests"] == 3


@pytest.mark.parametrize("call", ["generate", "stream", "count", "embed", "list", "get"])
def test_a_bad_key_is_unauthenticated_everywhere(gw: Gateway, call: str) -> None:
    client = gemini(gw, "sk-pitstop-wrong")
    calls = {"generate": lambda: client.models.generate_content(model="up", contents="x"),
             "stream": lambda: list(client.models.generate_content_stream(model="up", contents="x")),
             "count": lambda: client.models.count_tokens(model="up", contents="x"),
             "embed": lambda: client.models.embed_content(model="emb", contents="x"),
             "list": lambda: list(client.models.list()),
             "get": lambda: client.models.get(model="up")}
    with pytest.raises(errors.ClientError) as refused:
        calls[call]()
    assert (refused.value.code, refused.value.status) == (401, "UNAUTHENTICATED")
    assert "invalid or missing API key" in (refused.value.message or "")


def test_a_model_that_does_not_exist(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(model="nope", contents="x")
    assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND") and "nope" in (missing.value.message or "")
    with pytest.raises(errors.ClientError) as unembedded:
        client.models.embed_content(model="nope", contents="x")
    assert unembedded.value.code == 404
    assert sum(u.stats()["requests"] for u in upstreams) == 0


BAD_BODIES = [
    ({"contents": []}, "contents"),
    ({"contents": "hi"}, "contents"),
    ({**HI, "unknownField": 1}, "unknownField"),
    ({**HI, "cachedContent": "cachedContents/abc"}, "cachedContent"),
    ({**HI, "tools": [{"googleSearch": {}}]}, "tools[0]"),
    ({**HI, "tools": [{"functionDeclarations": [{"description": "no name"}]}]}, "tools[0].functionDeclarations[0]"),
    ({**HI, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}, "toolConfig.functionCallingConfig.mode"),
    ({**HI, "toolConfig": "x"}, "toolConfig"),
    ({**HI, "generationConfig": {"responseMimeType": "text/x.enum"}}, "generationConfig.responseMimeType"),
    ({**HI, "generationConfig": {"responseMimeType": "application/json", "responseSchema": {"type": "WORD"}}},
     "generationConfig.responseSchema.type"),
    ({**HI, "generationConfig": {"thinkingConfig": {"thinkingLevel": "EXTREME"}}},
     "generationConfig.thinkingConfig.thinkingLevel"),
    ({**HI, "generationConfig": {"speechConfig": {}}}, "generationConfig.speechConfig"),
    ({**HI, "generationConfig": {"responseModalities": ["IMAGE"]}}, "generationConfig.responseModalities"),
    ({**HI, "generationConfig": {"temperature": 9}}, "temperature"),
    ({**HI, "generationConfig": {"candidateCount": 0}}, "n"),
    ({**HI, "generationConfig": "hot"}, "generationConfig"),
    ({**HI, "systemInstruction": 5}, "systemInstruction.parts"),
    ({**HI, "safetySettings": "none"}, "safetySettings"),
    ({"contents": [{"role": "robot", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ({"contents": [{"parts": [1]}]}, "contents[0].parts[0]"),
    ({"contents": [{"parts": [{"inlineData": "x"}]}]}, "contents[0].parts[0].inlineData"),
    ({"contents": [{"parts": [{"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}}]}]}, "contents[0].parts[0]"),
    ({"contents": [{"parts": [{"fileData": {"fileUri": 5}}]}]}, "contents[0].parts[0].fileData"),
    ({"contents": [{"parts": [{"executableCode": {"code": "1"}}]}]}, "contents[0].parts[0]"),
    ({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {}}}]}]},
     "contents[0].parts[0].functionResponse"),  # it answers no call
    ({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": "x"}}]},
                   {"parts": [{"text": "x"}]}]}, "contents[0].parts[0].functionCall"),
    ({"contents": [{"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]}]},
     "contents[0].parts[0]"),
]


@pytest.mark.parametrize("body, param", BAD_BODIES)
def test_bad_bodies_are_invalid_arguments(gw: Gateway, upstreams: tuple, body: dict, param: str) -> None:
    with gw.http(headers={"x-goog-api-key": MASTER}) as http:
        response = http.post("/v1beta/models/up:generateContent", json=body)
    error = google_error(response, 400, "INVALID_ARGUMENT")
    assert error["details"][0]["metadata"] == {"param": param}
    assert gw.row(response.headers["x-pitstop-request-id"])["endpoint"] == "gemini"
    assert sum(u.stats()["requests"] for u in upstreams) == 0


def test_the_sdk_raises_a_bad_body_as_its_client_error(gw: Gateway) -> None:
    client = gemini(gw)
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="up", contents="x", config=types.GenerateContentConfig(
            cached_content="cachedContents/abc"))
    assert (refused.value.code, refused.value.status) == (400, "INVALID_ARGUMENT")
    assert "cachedContent" in (refused.value.message or "")


@pytest.mark.parametrize("path, body, status, name", [
    ("/v1beta/models/up:generateContent", b"{not json", 400, "INVALID_ARGUMENT"),
    ("/v1beta/models/up:predict", HI, 404, "NOT_FOUND"),
    ("/v1beta/models/:generateContent", HI, 404, "NOT_FOUND"),
    ("/v1beta/models/up:countTokens", {"contents": 5}, 400, "INVALID_ARGUMENT"),
    ("/v1beta/models/emb:batchEmbedContents", {"requests": []}, 400, "INVALID_ARGUMENT"),
    ("/v1beta/models/emb:batchEmbedContents", {"requests": [{"model": "models/up", "content": {"parts": [
        {"text": "x"}]}}]}, 400, "INVALID_ARGUMENT"),
    ("/v1beta/models/emb:embedContent", {"content": {"parts": [{"inlineData": {}}]}}, 400, "INVALID_ARGUMENT"),
    ("/v1beta/models/emb:embedContent", {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 0}, 400,
     "INVALID_ARGUMENT"),
])
def test_other_refusals_in_googles_shape(gw: Gateway, upstreams: tuple, path: str, body: object, status: int,
                                         name: str) -> None:
    with gw.http(headers={"x-goog-api-key": MASTER}) as http:
        response = (http.post(path, content=body) if isinstance(body, bytes) else http.post(path, json=body))
    google_error(response, status, name)
    assert sum(u.stats()["requests"] for u in upstreams) == 0


def test_an_upstream_failure_and_a_broken_stream(gw: Gateway, upstreams: tuple) -> None:
    client = gemini(gw)
    with pytest.raises(errors.APIError) as failed:
        client.models.generate_content(model="up", contents="[fail:400] x")
    assert (failed.value.code, failed.value.status) == (400, "INVALID_ARGUMENT")
    got = []
    with pytest.raises(errors.APIError) as broke:
        for chunk in client.models.generate_content_stream(model="up", contents="[break:2] go"):
            got.append(chunk.text)
    assert got == ["from-a", " w1"] and "stream broke" in (broke.value.message or "")
    rows = [r for r in gw.rows() if r["endpoint"] == "gemini" and r["status"] == "error"]
    assert any("stream broke" in (r["error"] or "") for r in rows)
