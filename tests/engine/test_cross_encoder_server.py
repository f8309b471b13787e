"""`pitstop engine serve` on a cross-encoder folder (engine/server/cross_encoder_app.py) over a real socket,
with httpx (the openai SDK has no rerank): vLLM's /rerank (three paths) and /score (two) bodies and answers,
best first, top_n and return_documents; 1:1, 1:N and N:N scores; bad bodies and generation requests a 400
in OpenAI's shape; and the CLI: make-tiny-model's cross-encoder families and `serve` on one as a subprocess."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.cross_encoder import CrossEncoder
from engine.server.cross_encoder_app import create_cross_encoder_app
from engine.tiny_cross_encoder import make_tiny_cross_encoder
from gateway.cli import main
from tests.engine.cross_encoders import DOCUMENTS, QUERY, reference_scores
from tests.engine.serving import engine_serve_process, serve_in_thread


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "bert", "bert", max_positions=64)


@pytest.fixture(scope="module")
def expected(folder: Path) -> list[float]:
    return reference_scores(folder, [(QUERY, document) for document in DOCUMENTS])


@pytest.fixture(scope="module")
def client(folder: Path) -> Iterator[httpx.Client]:
    with serve_in_thread(create_cross_encoder_app(CrossEncoder(folder, "cpu"), "reranker")) as url, \
            httpx.Client(base_url=url, timeout=60) as http:
        yield http


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_answers_as_vllm_best_first(client: httpx.Client, expected: list[float], path: str) -> None:
    answer = client.post(path, json={"model": "reranker", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([expected[i] for i in order], abs=1e-5)
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
    assert body["model"] == "reranker" and body["id"].startswith("rerank-") and body["usage"]["total_tokens"] > 0


def test_top_n_return_documents_and_document_objects(client: httpx.Client, expected: list[float]) -> None:
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    objects = [{"text": document} for document in DOCUMENTS]
    cut = client.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": objects, "top_n": 2,
                                          "return_documents": False}).json()
    assert [r["index"] for r in cut["results"]] == order[:2] and all("document" not in r for r in cut["results"])
    more = client.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 50})
    assert [r["index"] for r in more.json()["results"]] == order
    whole = client.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCUMENTS}).json()
    assert cut["usage"] == whole["usage"]  # every pair is read, whatever top_n keeps


def test_score_pairs_one_to_one_one_to_many_and_many_to_many(client: httpx.Client, folder: Path,
                                                              expected: list[float]) -> None:
    many = client.post("/v1/score", json={"model": "reranker", "text_1": QUERY, "text_2": DOCUMENTS})
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["object"] == "list" and body["id"].startswith("score-") and body["model"] == "reranker"
    assert [d["index"] for d in body["data"]] == list(range(len(DOCUMENTS)))  # the pairs' order, not ranked
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-5)
    assert all(d["object"] == "score" for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    one = client.post("/score", json={"model": "reranker", "text_1": QUERY, "text_2": DOCUMENTS[2]}).json()
    assert [d["score"] for d in one["data"]] == pytest.approx([expected[2]], abs=1e-5)
    firsts = ["what is base64", "pick a random number"]
    seconds = [DOCUMENTS[3], DOCUMENTS[1]]
    paired = client.post("/score", json={"model": "reranker", "text_1": firsts, "text_2": seconds}).json()
    assert [d["score"] for d in paired["data"]] == pytest.approx(
        reference_scores(folder, list(zip(firsts, seconds, strict=True))), abs=1e-5)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/rerank", [], None),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"]}, "model"),
    ("/v1/rerank", {"model": "reranker", "documents": ["a"]}, "query"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": []}, "documents"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a", 3]}, "documents[1]"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a"], "return_documents": "yes"},
     "return_documents"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a"], "rank_fields": ["x"]}, "rank_fields"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a"], "truncate_prompt_tokens": 65},
     "truncate_prompt_tokens"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a"], "truncate_prompt_tokens": "8"},
     "truncate_prompt_tokens"),
    ("/v1/rerank", {"model": "reranker", "query": QUERY, "documents": ["a"] * 1001}, "documents"),
    ("/v1/score", {"model": "reranker", "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_1"),
    ("/v1/score", {"model": "reranker", "text_1": "a", "text_2": []}, "text_2"),
    ("/v1/score", {"model": "reranker", "text_1": "a"}, "text_2"),
    ("/v1/score", {"model": "reranker", "text_1": "a", "text_2": "b", "input": "c"}, "input"),
])
def test_bad_bodies_are_a_400_naming_the_field(client: httpx.Client, path: str, body: object,
                                               param: str | None) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_a_pair_past_the_model_length_is_a_400_and_truncation_serves_it(client: httpx.Client) -> None:
    long_document = " ".join(DOCUMENTS * 4)
    body = {"model": "reranker", "query": QUERY, "documents": ["short", long_document]}
    refused = client.post("/v1/rerank", json=body)
    assert refused.status_code == 400 and "maximum context length is 64 tokens" in refused.json()["error"]["message"]
    served = client.post("/v1/rerank", json={**body, "truncate_prompt_tokens": -1})
    assert served.status_code == 200 and len(served.json()["results"]) == 2


def test_an_unknown_model_is_a_404_and_generation_a_400(client: httpx.Client) -> None:
    unknown = client.post("/v1/rerank", json={"model": "other", "query": QUERY, "documents": ["a"]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        refused = client.post(path, json={"model": "reranker", "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_supported"
        assert "/v1/rerank" in refused.json()["error"]["message"]
    assert client.post("/v1/score", content=b"{not json").status_code == 400


def test_models_and_health(client: httpx.Client, folder: Path) -> None:
    listed = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["max_model_len"], m["root"]) for m in listed] == [("reranker", 64, str(folder))]
    assert client.get("/healthz").json() == {"status": "ok"} == client.get("/health").json()


def test_the_cli_makes_a_tiny_cross_encoder_and_serves_it(tmp_path: Path) -> None:
    out = tmp_path / "xlmr"
    assert main(["engine", "make-tiny-model", str(out), "--family", "xlm_roberta_cross_encoder", "--layers", "1",
                 "--hidden", "32", "--seed", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"] and config["num_hidden_layers"] == 1
    with engine_serve_process("--model", str(out), "--served-model-name", "rr",
                              "--log-level", "warning") as (url, process):
        answer = httpx.post(f"{url}/v1/rerank", timeout=30,
                            json={"model": "rr", "query": QUERY, "documents": DOCUMENTS[:3]})
        assert answer.status_code == 200, answer.text
        assert [r["relevance_score"] for r in answer.json()["results"]] == pytest.approx(sorted(
            reference_scores(out, [(QUERY, d) for d in DOCUMENTS[:3]]), reverse=True), abs=1e-5)
    assert process.returncode == 0, process.stdout.read().decode()
