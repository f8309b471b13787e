"""POST /v1/rerank over a real socket (httpx: the openai SDK has no rerank) with an embedding model on the
fake upstream process: documents ranked by their embeddings' cosine with the query's (the fake's vectors
say what they embed, so the scores are computed here by hand), `top_n`, `return_documents`, documents as
objects, the /rerank and /v2/rerank paths, litellm's rerank client reading the answer, the outcome row and
the metrics, the response cache one entry an input, keys' budgets and rates, and every bad request a 4xx in
OpenAI's error shape naming its field."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from storage.db import create_engine
from storage.export import iter_training_rows
from storage.keys import KeyStore
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess, embedding_of

QUERY = "x y"
# The fake's vector of an input is [its words, 97 (instance a), its place in the call, 0.5]; the query goes
# first (place 0), so these four rank 1, 2, 3, 0: neither their order nor their length alone.
DOCUMENTS = ["w w w w w w w w", "w w", "w", "w w w"]
WORDS = 2 + 8 + 2 + 1 + 3  # the upstream's usage: every input's words


def cosine(document: str, place: int) -> float:
    query, vector = np.array(embedding_of(QUERY, "a", 0)), np.array(embedding_of(document, "a", place))
    return float(query @ vector / np.linalg.norm(query) / np.linalg.norm(vector))


EXPECTED = sorted(((i, cosine(d, i + 1)) for i, d in enumerate(DOCUMENTS)), key=lambda pair: -pair[1])


def embedding_model(name: str, api_base: str) -> dict:
    entry = model_entry(name, api_base, provider="hosted_vllm", transport="auto")
    entry["model_info"] |= {"mode": "embedding"}
    return entry


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a = upstream_processes[0]
    models = [embedding_model("emb", a.api_base), model_entry("chat", a.api_base),
              model_entry("plain", a.api_base, provider="hosted_vllm", transport="auto")]  # no mode: not a ranker
    groups = [{"name": "grp", "models": ["chat"], "router": "tier-prior"}]
    tmp = tmp_path_factory.mktemp("rerank")
    with running_gateway(gateway_config(tmp, models, groups, storage={
            "url": f"sqlite:///{tmp / 'gateway.db'}", "spool_path": str(tmp / "spool.jsonl"), "store_text": True})) as gateway:
        yield gateway


def test_the_cosine_is_computed_as_by_hand() -> None:
    """"x y" is [2, 97, 0, 0.5], "w" in place 1 [1, 97, 1, 0.5]: (2 + 9409 + 0.25) / (|q| |d|)."""
    assert cosine("w", 1) == pytest.approx(9411.25 / math.sqrt(9413.25 * 9411.25))
    assert [i for i, _ in EXPECTED] == [1, 2, 3, 0]


def test_documents_are_ranked_by_their_embeddings_cosine_with_the_query(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        answer = http.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["index"] for r in body["results"]] == [i for i, _ in EXPECTED]
    for result, (index, score) in zip(body["results"], EXPECTED, strict=True):
        assert result["relevance_score"] == pytest.approx(score, rel=1e-6)
        assert result["document"] == {"text": DOCUMENTS[index]}  # returned unless asked not to, as vLLM does
    assert body["model"] == "emb" and body["id"].startswith("rerank-") and body["usage"] == {"total_tokens": WORDS}
    assert answer.headers["x-pitstop-model"] == "emb"
    sent = upstreams[0].stats()["bodies"]  # one embeddings call: the query first, then each document
    assert len(sent) == 1 and sent[0]["input"] == [QUERY, *DOCUMENTS] and sent[0]["encoding_format"] == "float"
    row = gw.row(answer.headers["x-pitstop-request-id"])
    assert (row["endpoint"], row["status"], row["model"], row["requested_model"]) == ("rerank", "ok", "emb", "emb")
    assert (row["prompt_tokens"], row["completion_tokens"], row["deployment"]) == (WORDS, 0, "emb#0")
    assert row["cost_usd"] == pytest.approx(WORDS * PRICE_IN)  # billed as embeddings: input at the input price
    assert row["prompt"] == [QUERY, *DOCUMENTS]


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_top_n_return_documents_and_document_objects(gw: Gateway, upstreams: tuple, path: str) -> None:
    objects = [{"text": d} for d in DOCUMENTS[:2]] + DOCUMENTS[2:]  # Cohere's and Jina's objects, mixed
    with gw.http() as http:
        cut = http.post(path, json={"model": "emb", "query": QUERY, "documents": objects, "top_n": 2,
                                    "return_documents": False})
        more = http.post(path, json={"model": "emb", "query": QUERY, "documents": DOCUMENTS, "top_n": 10})
    assert cut.status_code == more.status_code == 200, cut.text
    assert cut.json()["results"] == [{"index": i, "relevance_score": pytest.approx(s, rel=1e-6)} for i, s in EXPECTED[:2]]
    assert cut.json()["usage"] == {"total_tokens": WORDS}  # every document was embedded, whatever was kept
    assert [r["index"] for r in more.json()["results"]] == [i for i, _ in EXPECTED]  # top_n past the documents
    assert upstreams[0].stats()["bodies"][0]["input"] == [QUERY, *DOCUMENTS]  # objects sent as their text


@pytest.mark.parametrize("provider, path", [("litellm_proxy", ""), ("cohere", ""), ("hosted_vllm", "/v1")])
def test_litellms_rerank_client_reads_the_answer(gw: Gateway, upstreams: tuple, provider: str, path: str) -> None:
    """A real client: litellm's `rerank`, speaking to the gateway as to LiteLLM's proxy, Cohere or vLLM."""
    from gateway.backends.litellm_backend import _litellm  # litellm, offline

    answer = _litellm().rerank(model=f"{provider}/emb", api_base=gw.url + path, api_key="none", query=QUERY,
                               documents=DOCUMENTS, top_n=2)
    assert [(r["index"], r["relevance_score"]) for r in answer.results] == [
        (i, pytest.approx(s, rel=1e-6)) for i, s in EXPECTED[:2]]
    assert [r["document"]["text"] for r in answer.results] == [DOCUMENTS[i] for i, _ in EXPECTED[:2]]


BAD = [
    ([], 400, None),
    ({"query": "q", "documents": ["a"]}, 400, "model"),
    ({"model": "emb", "documents": ["a"]}, 400, "query"),
    ({"model": "emb", "query": "", "documents": ["a"]}, 400, "query"),
    ({"model": "emb", "query": ["q"], "documents": ["a"]}, 400, "query"),
    ({"model": "emb", "query": "q"}, 400, "documents"),
    ({"model": "emb", "query": "q", "documents": []}, 400, "documents"),
    ({"model": "emb", "query": "q", "documents": "a"}, 400, "documents"),
    ({"model": "emb", "query": "q", "documents": ["a"] * 1001}, 400, "documents"),
    ({"model": "emb", "query": "q", "documents": ["a", 7]}, 400, "documents[1]"),
    ({"model": "emb", "query": "q", "documents": ["a", ""]}, 400, "documents[1]"),
    ({"model": "emb", "query": "q", "documents": [{"content": "a"}]}, 400, "documents[0]"),
    ({"model": "emb", "query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n"),
    ({"model": "emb", "query": "q", "documents": ["a"], "top_n": -2}, 400, "top_n"),
    ({"model": "emb", "query": "q", "documents": ["a"], "top_n": 1.5}, 400, "top_n"),
    ({"model": "emb", "query": "q", "documents": ["a"], "top_n": True}, 400, "top_n"),
    ({"model": "emb", "query": "q", "documents": ["a"], "return_documents": "yes"}, 400, "return_documents"),
    ({"model": "emb", "query": "q", "documents": ["a"], "priority": "high"}, 400, "priority"),
    ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "model"),
    ({"model": "chat", "query": "q", "documents": ["a"]}, 400, "model"),  # a chat model on Pitstop's engine
    ({"model": "plain", "query": "q", "documents": ["a"]}, 400, "model"),  # not marked embedding or rerank
    ({"model": "grp", "query": "q", "documents": ["a"]}, 400, "model"),  # a route group
]


def test_bad_requests_are_4xx_in_openais_shape_naming_the_field_and_leave_rows(gw: Gateway, upstreams: tuple) -> None:
    with gw.http() as http:
        answers = [http.post("/v1/rerank", json=body) for body, _, _ in BAD]
        answers.append(http.post("/v1/rerank", content=b"{not json"))
    for (body, status, param), answer in zip(BAD, answers[:-1], strict=True):
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (body, error)
        assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error") and error["message"]
    assert answers[-1].status_code == 400
    for answer in answers[-4:-1]:  # the models that do not rerank are told which do
        assert answer.json()["error"]["code"] == "model_not_supported" and "emb" in answer.json()["error"]["message"]
    rows = gw.rows([a.headers["x-pitstop-request-id"] for a in answers])
    assert len(rows) == len(answers) and {(r["status"], r["endpoint"]) for r in rows} == {("error", "rerank")}
    assert upstreams[0].stats()["requests"] == 0


def test_metrics_count_reranks_and_training_exports_leave_them_out(gw: Gateway, upstreams: tuple) -> None:
    def requests_ok(http: httpx.Client) -> float:
        text = http.get("/metrics").text
        found = re.search(r'^pitstop_requests_total\{model="emb",route_group="",status="ok"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    with gw.http() as http:
        before = requests_ok(http)
        answer = http.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": ["w"]})
        assert answer.status_code == 200
        assert requests_ok(http) == before + 1
    gw.flush()
    engine = create_engine(gw.storage_url)
    try:
        exported = {row["request_id"] for row in iter_training_rows(engine)}
    finally:
        engine.dispose()
    assert answer.headers["x-pitstop-request-id"] not in exported


def test_documents_reranked_again_come_from_the_cache(upstreams: tuple, tmp_path: Path) -> None:
    """With the response cache on, each input is kept apart: a second rerank embeds only what is new."""
    a = upstreams[0]
    with running_gateway(gateway_config(tmp_path, [embedding_model("emb", a.api_base)], cache={})) as gateway, \
            gateway.http() as http:
        first = http.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": DOCUMENTS})
        again = http.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": DOCUMENTS})
        grown = http.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": [*DOCUMENTS, "v v"]})
    assert first.json()["results"] == again.json()["results"]
    assert (first.headers["x-pitstop-cache"], again.headers["x-pitstop-cache"], grown.headers["x-pitstop-cache"]) \
        == ("miss", "hit", "partial")
    assert again.json()["usage"] == {"total_tokens": 0}
    assert [body["input"] for body in a.stats()["bodies"]] == [[QUERY, *DOCUMENTS], ["v v"]]
    # "v v" was embedded alone (place 0 of its call): its cached vector is what it is scored by.
    new = next(r for r in grown.json()["results"] if r["index"] == 4)
    query, vector = np.array(embedding_of(QUERY, "a", 0)), np.array(embedding_of("v v", "a", 0))
    assert new["relevance_score"] == pytest.approx(float(query @ vector / np.linalg.norm(query) / np.linalg.norm(vector)))


def test_keys_models_budgets_and_rates_apply(upstreams: tuple, tmp_path: Path) -> None:
    a = upstreams[0]
    raw = gateway_config(tmp_path, [embedding_model("emb", a.api_base), embedding_model("emb2", a.api_base)],
                         auth={"require_keys": True, "master_key": "master"})
    body = {"model": "emb", "query": QUERY, "documents": DOCUMENTS}
    with running_gateway(raw) as gateway:
        keys = KeyStore(gateway.storage_url)
        budget_id, budget = keys.create("budget", budget_usd=1.5 * WORDS * PRICE_IN, models=["emb"])
        _, rated = keys.create("rated", rpm_limit=1)
        with gateway.http() as http:
            anonymous = http.post("/v1/rerank", json=body)
            spent = [http.post("/v1/rerank", json=body, headers={"authorization": f"Bearer {budget}"})
                     for _ in range(3)]
            other = http.post("/v1/rerank", json={**body, "model": "emb2"}, headers={"authorization": f"Bearer {budget}"})
            rates = [http.post("/v1/rerank", json=body, headers={"authorization": f"Bearer {rated}"}) for _ in range(2)]
        gateway.flush()  # the spend goes into the key's row with the outcome rows' batch
        assert keys.get(budget_id).spent_usd == pytest.approx(2 * WORDS * PRICE_IN)  # type: ignore[union-attr]
    assert anonymous.status_code == 401
    assert [s.status_code for s in spent] == [200, 200, 429]  # the second starts with half a rerank left
    assert spent[2].json()["error"]["code"] == "budget_exceeded"
    assert float(spent[0].headers["x-pitstop-budget-remaining-usd"]) == pytest.approx(1.5 * WORDS * PRICE_IN)
    assert (other.status_code, other.json()["error"]["param"]) == (403, "model")
    assert [r.status_code for r in rates] == [200, 429] and rates[1].json()["error"]["code"] == "rate_limit_exceeded"
