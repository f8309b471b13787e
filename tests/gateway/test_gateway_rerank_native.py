"""POST /v1/rerank to a reranker (`model_info.mode: rerank`): a vLLM server's /rerank over the direct
transport (the request it received, its answer passed back, a failing deployment retried on the next, a
bad answer a 502), litellm's `arerank` (Cohere, and vLLM through litellm), traced; an engine embedding
model in the gateway's process ranks by the cosine of its own /v1/embeddings answers; and the config keeps
rerankers out of chats, and engine keys off a cross-encoder in the gateway's process
(test_gateway_rerank_cross_encoder.py serves one)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.tiny_model import make_tiny_model
from gateway.config import ConfigError, parse_settings
from rankers.work import CHARS_PER_TOKEN
from tests.engine.otlp import CLIENT, SERVER, collector, traceparent
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.rerankers import FakeReranker, pair_tokens, score_of

QUERY = "where is the red fox"
DOCUMENTS = ["a red fox", "blue sky", "the fox is in the den", "red fox red fox where"]
RERANK = {"mode": "rerank", "input_cost_per_token": PRICE_IN, "output_cost_per_token": 0.0}


def reranker(name: str, model: str, api_base: str, **params: str) -> dict:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": api_base, "api_key": "k", **params},
            "model_info": RERANK}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeReranker, str, FakeReranker, str]]:
    one, two = FakeReranker("r1"), FakeReranker("r2")
    with serve_in_thread(one.app()) as url_one, serve_in_thread(two.app()) as url_two:
        yield one, url_one, two, url_two


@pytest.fixture(scope="module")
def gw(fakes: tuple, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    _, url_one, _, url_two = fakes
    models = [reranker("fast", "hosted_vllm/bge-reranker", f"{url_one}/v1", transport="direct"),
              reranker("fast", "hosted_vllm/bge-reranker", f"{url_two}/v1", transport="direct"),
              reranker("cohere-rr", "cohere/rerank-v3.5", url_one),
              reranker("vllm-litellm", "hosted_vllm/bge-reranker", f"{url_one}/v1", transport="litellm")]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("rerank-native"), models)) as gateway:
        yield gateway


@pytest.fixture
def calls(fakes: tuple) -> tuple[FakeReranker, FakeReranker]:
    fakes[0].requests.clear()
    fakes[2].requests.clear()
    return fakes[0], fakes[2]


def expected(query: str, top_n: int | None = None) -> list[tuple[int, float]]:
    scored = sorted(((i, score_of(query, d, i)) for i, d in enumerate(DOCUMENTS)), key=lambda s: (-s[1], s[0]))
    return scored[:top_n]


def test_a_vllm_reranker_gets_the_request_and_its_answer_is_passed_back(gw: Gateway, calls: tuple) -> None:
    documents = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]]
    with gw.http() as http:
        answer = http.post("/v1/rerank", json={"model": "fast", "query": QUERY, "documents": documents, "top_n": 2,
                                               "truncate_prompt_tokens": 64})
    assert answer.status_code == 200, answer.text
    path, sent, _ = calls[0].requests[0]
    assert path == "/v1/rerank" and not calls[1].requests  # vLLM's path under api_base; the first deployment
    assert sent == {"model": "bge-reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 2,
                    "truncate_prompt_tokens": 64}  # its own name, the texts, vLLM's own fields passed through
    tokens = sum(pair_tokens(QUERY, d) for d in DOCUMENTS)
    assert answer.json() == {"id": "rerank-r1", "model": "fast", "usage": {"total_tokens": tokens},
                             "results": [{"index": i, "relevance_score": s, "document": {"text": DOCUMENTS[i]}}
                                         for i, s in expected(QUERY, 2)]}
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"], row["deployment"]) == ("rerank", "ok", "fast", "fast#0")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (tokens, 0)
    assert row["cost_usd"] == pytest.approx(tokens * PRICE_IN)


def test_a_failing_reranker_deployment_is_retried_and_a_bad_answer_is_a_502(gw: Gateway, calls: tuple) -> None:
    with gw.http() as http:
        retried = http.post("/rerank", json={"model": "fast", "query": f"[fail:500@r1] {QUERY}", "documents": DOCUMENTS,
                                             "return_documents": False})
        bad = http.post("/v1/rerank", json={"model": "fast", "query": f"[bad-index] {QUERY}", "documents": DOCUMENTS})
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == "rerank-r2" and all("document" not in r for r in retried.json()["results"])
    assert [r["index"] for r in retried.json()["results"]] == [i for i, _ in expected(f"[fail:500@r1] {QUERY}")]
    row = gw.row(retried.headers["x-pitstop-request-id"])
    assert (row["deployment"], row["status"]) == ("fast#1", "ok")
    assert bad.status_code == 502 and bad.json()["error"]["code"] == "bad_upstream_response"
    assert gw.row(bad.headers["x-pitstop-request-id"])["status"] == "error"


@pytest.mark.parametrize("model, path", [("cohere-rr", "/v2/rerank"), ("vllm-litellm", "/v1/rerank")])
def test_litellm_rerankers(gw: Gateway, calls: tuple, model: str, path: str) -> None:
    with gw.http() as http:
        answer = http.post("/v2/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 3})
    assert answer.status_code == 200, answer.text
    called, sent, _ = calls[0].requests[0]
    assert called == path and sent["model"] == ("rerank-v3.5" if model == "cohere-rr" else "bge-reranker")
    assert (sent["query"], sent["documents"], sent["top_n"]) == (QUERY, DOCUMENTS, 3)
    body = answer.json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == expected(QUERY, 3)
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i, _ in expected(QUERY, 3)]
    row = gw.row(answer.headers["x-pitstop-request-id"])
    if model == "cohere-rr":  # Cohere bills searches, not tokens: the row and the answer carry the estimate
        chars = len(QUERY) * len(DOCUMENTS) + sum(map(len, DOCUMENTS))
        assert body["usage"] == {"total_tokens": math.ceil(chars / CHARS_PER_TOKEN)}
        assert row["extra"]["usage_estimated"] is True
    else:
        assert body["usage"] == {"total_tokens": sum(pair_tokens(QUERY, d) for d in DOCUMENTS)}
    assert row["prompt_tokens"] == body["usage"]["total_tokens"] and row["endpoint"] == "rerank"


def test_a_chat_or_embeddings_sent_to_a_reranker_is_a_400(gw: Gateway) -> None:
    with gw.http() as http:
        chat = http.post("/v1/chat/completions", json={"model": "fast", "messages": [{"role": "user", "content": "x"}]})
        embeddings = http.post("/v1/embeddings", json={"model": "fast", "input": "x"})
    for refused in (chat, embeddings):
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_supported"
        assert "/v1/rerank" in refused.json()["error"]["message"]


def test_a_traced_rerank_has_its_attempt_span_and_sends_the_traceparent(tmp_path: Path) -> None:
    fake = FakeReranker("r")
    with collector() as (received, endpoint), serve_in_thread(fake.app()) as url:
        raw = gateway_config(tmp_path, [reranker("fast", "hosted_vllm/bge", f"{url}/v1", transport="direct")],
                             tracing={"otlp_endpoint": endpoint, "service_name": "gw"})
        trace_id, parent = "1" * 32, "2" * 16
        with running_gateway(raw) as gateway, gateway.http() as http:
            answer = http.post("/v1/rerank", json={"model": "fast", "query": QUERY, "documents": DOCUMENTS},
                               headers={"traceparent": traceparent(trace_id, parent)})
        assert answer.status_code == 200, answer.text
        server = received.one("POST /v1/rerank", trace_id)
        attempt = received.one("rerank fast", trace_id)
    assert server.kind == SERVER and server.parent_id == parent
    assert attempt.kind == CLIENT and attempt.attributes["gen_ai.operation.name"] == "rerank"
    assert fake.requests[0][2]["traceparent"].split("-")[1] == trace_id


def test_an_engine_embedding_model_ranks_by_the_cosine_of_its_own_embeddings(tmp_path: Path) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny", family="qwen3")
    embedder = {"model_name": "embedder", "model_info": {"mode": "embedding"},
                "litellm_params": {"model": "pitstop-local/embedder", "model_dir": str(model_dir), "num_blocks": 64,
                                   "max_model_len": 256}}
    with running_gateway(gateway_config(tmp_path, [embedder])) as gateway, gateway.http() as http:
        ranked = http.post("/v1/rerank", json={"model": "embedder", "query": QUERY, "documents": DOCUMENTS})
        embedded = http.post("/v1/embeddings", json={"model": "embedder", "input": [QUERY, *DOCUMENTS],
                                                     "encoding_format": "float"})
    assert ranked.status_code == embedded.status_code == 200, ranked.text
    vectors = np.array([item["embedding"] for item in embedded.json()["data"]])
    cosines = vectors[1:] @ vectors[0] / np.linalg.norm(vectors[1:], axis=1) / np.linalg.norm(vectors[0])
    results = ranked.json()["results"]
    assert [r["index"] for r in results] == sorted(range(len(DOCUMENTS)), key=lambda i: -cosines[i])
    assert [r["relevance_score"] for r in results] == pytest.approx([cosines[r["index"]] for r in results], abs=1e-5)
    assert ranked.json()["usage"] == {"total_tokens": embedded.json()["usage"]["prompt_tokens"]}


@pytest.mark.parametrize("change, message", [
    ("engine", "generates nothing: speculative_config do not apply"),
    ("group", "route_groups.0.models: 'rr' is a reranker"),
    ("fallback", "fallbacks: 'rr' is a reranker"),
    ("mixed", "'rr' has entries marked model_info.mode: rerank and entries not"),
])
def test_the_config_keeps_rerankers_out_of_chats_and_engine_keys_off_them(tmp_path: Path, change: str, message: str) -> None:
    base = "http://127.0.0.1:9/v1"
    rr = reranker("rr", "hosted_vllm/rr", base)
    if change == "engine":  # a reranker in this process generates nothing: no generation keys
        rr = {"model_name": "rr", "litellm_params": {"model": "pitstop-local/rr", "model_dir": "rr",
                                                     "speculative_config": {"method": "ngram"}},
              "model_info": RERANK}
    models = [rr, model_entry("chat", base)]
    if change == "mixed":
        models.append(model_entry("rr", base, provider="hosted_vllm"))
    groups = [{"name": "grp", "models": ["rr" if change == "group" else "chat"]}]
    sections = {"fallbacks": {"on_error": {"chat": ["rr"]}}} if change == "fallback" else {}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_settings(gateway_config(tmp_path, models, groups, **sections))


def test_an_unreachable_reranker_is_a_502_not_a_500(tmp_path: Path) -> None:
    dead = reranker("rr", "hosted_vllm/rr", "http://127.0.0.1:9/v1", transport="direct")
    with running_gateway(gateway_config(tmp_path, [dead], server={"num_retries": 0})) as gateway, gateway.http() as http:
        answer = http.post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["a"]})
    assert answer.status_code == 502 and answer.json()["error"]["type"] == "server_error"
