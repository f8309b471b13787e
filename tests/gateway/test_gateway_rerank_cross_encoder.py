"""/v1/rerank through the gateway on the engine's cross-encoder (engine/cross_encoder.py), over real sockets
with httpx: in the gateway's process (`pitstop-local/`, `model_info.mode: rerank`: gateway/backends/
cross_encoder.py), and `pitstop engine serve` on the folder reached as a vLLM server (`hosted_vllm/`, direct
and through litellm) and as a Pitstop engine (`pitstop-engine/`). Each way, the scores are transformers' own
on the pairs, ordered, cut and billed as vLLM's; a pair past the model's length is a 400; the config refuses
a reranker folder served as anything else, and a rerank entry on a folder that is not one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from engine.cross_encoder import CrossEncoder
from engine.server.cross_encoder_app import create_cross_encoder_app
from engine.tiny_cross_encoder import make_tiny_cross_encoder
from engine.tiny_model import make_tiny_model
from gateway.backends.cross_encoder import CrossEncoderBackend
from gateway.config import ConfigError, parse_settings
from gateway.deployment_build import make_backend
from tests.engine.cross_encoders import DOCUMENTS, QUERY, reference_scores
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, running_gateway

RERANK = {"mode": "rerank", "input_cost_per_token": PRICE_IN, "output_cost_per_token": 0.0}
REMOTE = {"vllm-direct": ("hosted_vllm", {}), "vllm-litellm": ("hosted_vllm", {"transport": "litellm"}),
          "engine-http": ("pitstop-engine", {})}


def local(name: str, folder: Path, **params: object) -> dict:
    return {"model_name": name, "model_info": RERANK,
            "litellm_params": {"model": f"pitstop-local/{name}", "model_dir": str(folder), **params}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("gw-ce") / "bert", "bert", max_positions=64)


@pytest.fixture(scope="module")
def expected(folder: Path) -> list[float]:
    return reference_scores(folder, [(QUERY, document) for document in DOCUMENTS])


@pytest.fixture(scope="module")
def gw(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with serve_in_thread(create_cross_encoder_app(CrossEncoder(folder, "cpu"), "bert-rr")) as url:
        remote = [{"model_name": name, "model_info": RERANK,
                   "litellm_params": {"model": f"{provider}/bert-rr", "api_base": f"{url}/v1", **params}}
                  for name, (provider, params) in REMOTE.items()]
        raw = gateway_config(tmp_path_factory.mktemp("gw-ce-config"), [local("in-process", folder), *remote])
        with running_gateway(raw) as gateway:
            yield gateway


@pytest.mark.parametrize("model", ["in-process", *REMOTE])
def test_the_engines_cross_encoder_ranks_with_transformers_scores(gw: Gateway, folder: Path, expected: list[float],
                                                                   model: str) -> None:
    with gw.http() as http:
        answer = http.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    assert [r["index"] for r in body["results"]] == order
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([expected[i] for i in order], abs=1e-5)
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = sum(len(tokenizer(QUERY, document)["input_ids"]) for document in DOCUMENTS)
    assert body["model"] == model and body["usage"] == {"total_tokens": tokens}
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"], row["prompt_tokens"]) == ("rerank", "ok", model, tokens)
    assert row["cost_usd"] == pytest.approx(tokens * PRICE_IN)


@pytest.mark.parametrize("model", ["in-process", "vllm-direct"])
def test_top_n_and_return_documents(gw: Gateway, expected: list[float], model: str) -> None:
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    with gw.http() as http:
        answer = http.post("/v2/rerank", json={"model": model, "query": QUERY, "top_n": 2, "return_documents": False,
                                               "documents": [{"text": document} for document in DOCUMENTS]})
    assert answer.status_code == 200, answer.text
    assert [(r["index"], set(r)) for r in answer.json()["results"]] == [(i, {"index", "relevance_score"})
                                                                        for i in order[:2]]


@pytest.mark.parametrize("model", ["in-process", "vllm-direct", "engine-http"])
def test_a_pair_past_the_models_length_is_a_400_unless_truncated(gw: Gateway, model: str) -> None:
    body = {"model": model, "query": QUERY, "documents": ["short", " ".join(DOCUMENTS * 4)]}
    with gw.http() as http:
        refused = http.post("/v1/rerank", json=body)
        truncated = http.post("/v1/rerank", json={**body, "truncate_prompt_tokens": -1})
        bad = http.post("/v1/rerank", json={**body, "truncate_prompt_tokens": 1000})
    assert refused.status_code == 400, refused.text
    assert "maximum context length is 64 tokens" in refused.json()["error"]["message"]
    assert truncated.status_code == 200 and len(truncated.json()["results"]) == 2
    assert bad.status_code == 400 and "truncate_prompt_tokens" in bad.json()["error"]["message"]


def test_a_chat_or_embeddings_sent_to_the_in_process_reranker_is_a_400(gw: Gateway) -> None:
    with gw.http() as http:
        chat = http.post("/v1/chat/completions",
                         json={"model": "in-process", "messages": [{"role": "user", "content": "x"}]})
        embeddings = http.post("/v1/embeddings", json={"model": "in-process", "input": "x"})
    for refused in (chat, embeddings):
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_supported"
        assert "/v1/rerank" in refused.json()["error"]["message"]


def test_the_config_matches_reranker_folders_and_rerank_entries(folder: Path, tmp_path: Path) -> None:
    lm = make_tiny_model(tmp_path / "lm")
    not_a_reranker = parse_settings(gateway_config(tmp_path, [local("rr", lm)]))
    with pytest.raises(ConfigError, match="needs a cross-encoder folder"):
        make_backend(not_a_reranker.model_list[0], not_a_reranker)
    as_chat = {"model_name": "chat", "litellm_params": {"model": "pitstop-local/chat", "model_dir": str(folder)}}
    chat = parse_settings(gateway_config(tmp_path, [as_chat]))
    with pytest.raises(ConfigError, match="is a cross-encoder .a reranker.: set model_info.mode: rerank"):
        make_backend(chat.model_list[0], chat)
    tiny = parse_settings(gateway_config(tmp_path, [local("rr", tmp_path / "built", tiny_model={"layers": 1})]))
    backend = make_backend(tiny.model_list[0], tiny)  # tiny_model: builds a tiny BERT reranker where it is absent
    assert isinstance(backend, CrossEncoderBackend)
    assert backend.encoder.model.config.architectures == ["BertForSequenceClassification"]
    assert backend.encoder.model.config.num_hidden_layers == 1
