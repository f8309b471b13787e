"""A cross-encoder's reranks through the response cache, over real sockets: a fake vLLM reranker (direct)
and Cohere (through litellm's `arerank`) are called once for two identical requests, the second a hit
in its header, its row (no cost) and the metrics; whatever changes the answer (query, documents, top_n,
return_documents, a field passed through, the model) misses; the client's no-cache and no-store are
honoured in the body and the header; an answer that failed is not kept. A bi-encoder's rerank is still
kept one entry an input by the embeddings path, and not a second time whole."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from gateway.cache_control import CACHE_HEADER
from gateway.cache_stores import LocalCacheStore
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import Gateway, gateway_config, running_gateway
from tests.gateway.rerankers import FakeReranker
from tests.gateway.test_gateway_rerank import embedding_model
from tests.gateway.test_gateway_rerank_native import reranker
from tests.gateway.upstream import UpstreamProcess

DOCUMENTS = ["a red fox", "blue sky", "the fox is in the den", "red fox red fox where"]


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeReranker, str]]:
    one = FakeReranker("r1")
    with serve_in_thread(one.app()) as url:
        yield one, url


@pytest.fixture(scope="module")
def gw(fake: tuple[FakeReranker, str], upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    url = fake[1]
    models = [reranker("fast", "hosted_vllm/bge-reranker", f"{url}/v1", transport="direct"),
              reranker("twin", "hosted_vllm/bge-reranker", f"{url}/v1", transport="direct"),  # the same reranker
              reranker("cohere-rr", "cohere/rerank-v3.5", url),
              embedding_model("emb", upstream_processes[0].api_base)]
    raw = gateway_config(tmp_path_factory.mktemp("rerank-cache"), models, cache={}, server={"num_retries": 0})
    with running_gateway(raw) as gateway:
        yield gateway


@pytest.fixture
def calls(fake: tuple[FakeReranker, str]) -> list:
    fake[0].requests.clear()
    return fake[0].requests


def query() -> str:
    """A query no other test has asked (the cache is the module's gateway's)."""
    return f"where is the red fox {uuid.uuid4().hex}"


def cache_metric(gw: Gateway, outcome: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    found = re.search(rf'^pitstop_response_cache_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("model", ["fast", "cohere-rr"])
def test_identical_reranks_call_the_reranker_once(gw: Gateway, calls: list, model: str) -> None:
    body = {"model": model, "query": query(), "documents": DOCUMENTS, "top_n": 3}
    hits = cache_metric(gw, "hit")
    with gw.http() as http:
        first = http.post("/v1/rerank", json=body)
        again = http.post("/rerank", json={**body, "documents": [{"text": d} for d in DOCUMENTS]})  # the same texts
    assert first.status_code == again.status_code == 200, first.text
    assert len(calls) == 1 and (first.headers[CACHE_HEADER], again.headers[CACHE_HEADER]) == ("miss", "hit")
    assert again.json() == first.json()  # served as it was kept
    assert cache_metric(gw, "hit") == hits + 1
    rows = {row["request_id"]: row for row in gw.rows([r.headers["x-pitstop-request-id"] for r in (first, again)])}
    kept, served = rows[first.headers["x-pitstop-request-id"]], rows[again.headers["x-pitstop-request-id"]]
    assert (kept["cache_hit"], served["cache_hit"]) == (False, True)
    assert kept["cost_usd"] > 0 and served["cost_usd"] == 0 and served["deployment"] is None
    assert served["endpoint"] == "rerank" and served["extra"]["cache"] == "hit"


def test_whatever_changes_the_answer_misses(gw: Gateway, calls: list) -> None:
    body = {"model": "fast", "query": query(), "documents": DOCUMENTS, "top_n": 2}
    changed = [{**body, "query": query()}, {**body, "documents": DOCUMENTS[:3]}, {**body, "documents": DOCUMENTS[::-1]},
               {**body, "top_n": 3}, {**body, "return_documents": False}, {**body, "truncate_prompt_tokens": 8},
               {**body, "model": "twin"}]
    with gw.http() as http:
        assert http.post("/v1/rerank", json=body).headers[CACHE_HEADER] == "miss"
        answers = [http.post("/v1/rerank", json=other) for other in changed]
        again = [http.post("/v1/rerank", json=other) for other in [body, *changed]]
    assert [a.headers[CACHE_HEADER] for a in answers] == ["miss"] * len(changed)
    assert [a.headers[CACHE_HEADER] for a in again] == ["hit"] * (len(changed) + 1)
    assert len(calls) == len(changed) + 1
    assert all("document" not in r for r in again[5].json()["results"])  # return_documents: false, kept so


def test_no_cache_and_no_store_are_honoured(gw: Gateway, calls: list) -> None:
    body = {"model": "fast", "query": query(), "documents": DOCUMENTS}
    with gw.http() as http:
        unkept = http.post("/v1/rerank", json={**body, "cache": {"no-store": True}})
        first = http.post("/v1/rerank", json=body)  # nothing was kept: a miss, kept now
        fresh = http.post("/v1/rerank", json=body, headers={CACHE_HEADER: "no-cache"})
        body_fresh = http.post("/v1/rerank", json={**body, "cache": {"no-cache": True}})
        hit = http.post("/v1/rerank", json=body)
    headers = [a.headers[CACHE_HEADER] for a in (unkept, first, fresh, body_fresh, hit)]
    assert headers == ["miss", "miss", "miss", "miss", "hit"] and len(calls) == 4


def test_opt_in_caches_a_rerank_only_when_it_asks(fake: tuple[FakeReranker, str],
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    fake[0].requests.clear()
    raw = gateway_config(tmp_path_factory.mktemp("opt-in"), [reranker("fast", "hosted_vllm/r", f"{fake[1]}/v1",
                                                                       transport="direct")],
                         cache={"requests": "opt_in"})
    body = {"model": "fast", "query": query(), "documents": DOCUMENTS}
    with running_gateway(raw) as gateway, gateway.http() as http:
        plain = [http.post("/v1/rerank", json=body) for _ in range(2)]
        asked = [http.post("/v1/rerank", json=body, headers={CACHE_HEADER: "use-cache"}) for _ in range(2)]
    assert [CACHE_HEADER in a.headers for a in plain] == [False, False]
    assert [a.headers[CACHE_HEADER] for a in asked] == ["miss", "hit"] and len(fake[0].requests) == 3


def test_an_answer_that_failed_is_not_kept(gw: Gateway, calls: list) -> None:
    body = {"model": "fast", "query": f"[bad-index] {query()}", "documents": DOCUMENTS}
    with gw.http() as http:
        answers = [http.post("/v1/rerank", json=body) for _ in range(2)]
    assert [a.status_code for a in answers] == [502, 502] and len(calls) == 2


def test_a_bi_encoders_rerank_is_kept_per_input_and_not_whole(gw: Gateway, upstreams: tuple) -> None:
    assert gw.state is not None and isinstance(gw.state.cache.store, LocalCacheStore)  # type: ignore[union-attr]
    store = gw.state.cache.store  # type: ignore[union-attr]
    documents = [f"{uuid.uuid4().hex} w" for _ in range(3)]
    body = {"model": "emb", "query": query(), "documents": documents}
    entries, stored = len(store), cache_metric(gw, "stored")
    with gw.http() as http:
        first = http.post("/v1/rerank", json=body)
        again = http.post("/v1/rerank", json=body)
    assert (first.headers[CACHE_HEADER], again.headers[CACHE_HEADER]) == ("miss", "hit")
    assert len(upstreams[0].stats()["bodies"]) == 1 and again.json()["results"] == first.json()["results"]
    assert len(store) - entries == cache_metric(gw, "stored") - stored == 4  # the query and each document
