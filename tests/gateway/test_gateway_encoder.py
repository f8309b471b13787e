"""An encoder in the gateway's process (`pitstop-encoder/all-minilm-l6-v2`, gateway/backends/encoder.py),
over a real socket with the openai SDK: the vectors are the vector stores' MiniLM's (gateway/passages.py),
float and base64 alike, `dimensions` cut and normalised again, usage in the encoder's tokens and the
outcome row's cost from them; /v1/rerank ranks by their cosine; chats, token-id inputs and too many
dimensions are 400s; the config refuses an encoder it does not ship or one not marked `mode: embedding`."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from gateway.config import ConfigError, parse_settings
from gateway.passages import PassageEncoder
from tests.gateway.harness import Gateway, gateway_config, running_gateway

MODEL = "minilm"
PRICE = 1e-8
TEXTS = ["The cat sat on the mat.", "A kitten slept on a rug.", "Bond yields rose on inflation data."]


def encoder_entry(**model_info: object) -> dict:
    return {"model_name": MODEL, "litellm_params": {"model": "pitstop-encoder/all-minilm-l6-v2"},
            "model_info": {"mode": "embedding", "input_cost_per_token": PRICE, **model_info}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("encoder")
    with running_gateway(gateway_config(tmp, [encoder_entry()])) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def encoder() -> PassageEncoder:
    return PassageEncoder()


def test_the_vectors_are_the_passage_encoders(gw: Gateway, encoder: PassageEncoder) -> None:
    with gw.openai() as client:
        raw = client.embeddings.with_raw_response.create(model=MODEL, input=TEXTS, encoding_format="float")
        answer = raw.parse()
        packed = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64 by default
    vectors = np.array([d.embedding for d in answer.data])
    expected = encoder.encode(TEXTS)
    assert vectors.shape == (3, 384) and np.allclose(vectors, expected, atol=1e-6)
    assert np.allclose(np.array([d.embedding for d in packed.data]), expected, atol=1e-6)
    tokens = encoder.count_tokens(TEXTS)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["model"], row["status"], row["prompt_tokens"]) == (MODEL, "ok", tokens)
    assert row["cost_usd"] == pytest.approx(tokens * PRICE)


def test_dimensions_are_cut_and_normalised(gw: Gateway, encoder: PassageEncoder) -> None:
    with gw.http() as http:
        body = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[0], "dimensions": 64,
                                                 "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    head = encoder.encode(TEXTS[:1])[0][:64]
    assert vector.shape == (64,) and np.allclose(vector, head / np.linalg.norm(head), atol=1e-6)


def test_rerank_orders_by_their_cosine(gw: Gateway, encoder: PassageEncoder) -> None:
    query = "pets asleep"
    with gw.http() as http:
        ranked = http.post("/v1/rerank", json={"model": MODEL, "query": query, "documents": TEXTS}).json()
    vectors = encoder.encode([query, *TEXTS])
    cosines = vectors[1:] @ vectors[0]
    assert [r["index"] for r in ranked["results"]] == np.argsort(-cosines).tolist()
    assert [r["relevance_score"] for r in ranked["results"]] == pytest.approx(sorted(cosines, reverse=True),
                                                                              abs=1e-5)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("/v1/completions", {"prompt": "hi"}, "model"),
    ("/v1/embeddings", {"input": [[101, 2023, 102]]}, "input"),
    ("/v1/embeddings", {"input": "hi", "dimensions": 385}, "dimensions"),
    ("/v1/embeddings", {"input": ""}, "input"),
])
def test_what_it_does_not_serve_is_a_400(gw: Gateway, path: str, body: dict, param: str) -> None:
    with gw.http() as http:
        response = http.post(path, json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_sdk_sees_a_bad_request(gw: Gateway) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(("entry", "message"), [
    ({**encoder_entry(), "litellm_params": {"model": "pitstop-encoder/bge-small"}}, "serves all-minilm-l6-v2"),
    (encoder_entry(mode="chat"), "set model_info.mode: embedding"),
    ({**encoder_entry(), "model_info": {}}, "set model_info.mode: embedding"),
])
def test_the_config_refuses_what_no_encoder_serves(tmp_path: Path, entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(gateway_config(tmp_path, [entry]))
