"""Guardrails (gateway/guardrails.py) on the requests that are texts to read rather than a conversation,
over real sockets: a rerank's query and documents and an embeddings request's inputs. A guarded
cross-encoder (a fake vLLM reranker) gets placeholders, numbered across the query and the documents, and
the client its own texts back; a bi-encoder's rerank and /v1/embeddings are masked input by input (the
fake upstream's bodies); an unguarded model gets the texts as sent. A blocklist's pattern or a blocked
PII kind refuses either with the 400 a chat gets, naming the field that held it, and nothing is sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine.serving import serve_in_thread
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.rerankers import FakeReranker
from tests.gateway.test_gateway_rerank import embedding_model
from tests.gateway.test_gateway_rerank_native import reranker
from tests.gateway.upstream import UpstreamProcess

GUARDED = ["fast", "emb", "chat"]
GUARDRAILS = [
    {"name": "mask-pii", "kind": "pii", "models": GUARDED},
    {"name": "no-codename", "kind": "blocklist", "patterns": ["(?i)project\\s+bluebird"], "models": GUARDED},
    {"name": "no-cards", "kind": "pii", "action": "block", "entities": ["credit_card"], "models": GUARDED},
]
QUERY = "who wrote to jane@example.com"
DOCUMENTS = ["jane@example.com wrote", "bob@home.net called (415) 555-0132", "nothing here"]


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeReranker, str]]:
    one = FakeReranker("r1")
    with serve_in_thread(one.app()) as url:
        yield one, url


def config(tmp_path: Path, fake_url: str, upstream: UpstreamProcess, **sections: object) -> dict:
    models = [reranker("fast", "hosted_vllm/bge-reranker", f"{fake_url}/v1", transport="direct"),
              reranker("open", "hosted_vllm/bge-reranker", f"{fake_url}/v1", transport="direct"),  # no guardrail
              embedding_model("emb", upstream.api_base), model_entry("chat", upstream.api_base)]
    return gateway_config(tmp_path, models, guardrails=GUARDRAILS, **sections)


@pytest.fixture
def gw(fake: tuple[FakeReranker, str], upstream: UpstreamProcess, tmp_path: Path) -> Iterator[Gateway]:
    fake[0].requests.clear()
    with running_gateway(config(tmp_path, fake[1], upstream)) as gateway:
        yield gateway


def metric(gw: Gateway, action: str, kind: str, guardrail: str = "mask-pii") -> float:
    line = f'pitstop_guardrail_actions_total{{action="{action}",guardrail="{guardrail}",kind="{kind}"}} '
    found = [row for row in httpx.get(gw.url + "/metrics").text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_guarded_cross_encoder_gets_placeholders_and_the_client_its_texts(
        gw: Gateway, fake: tuple[FakeReranker, str]) -> None:
    with gw.http() as http:
        guarded = http.post("/v1/rerank", json={"model": "fast", "query": QUERY, "documents": DOCUMENTS})
        plain = http.post("/v1/rerank", json={"model": "open", "query": QUERY, "documents": DOCUMENTS})
    assert guarded.status_code == plain.status_code == 200, guarded.text
    (_, to_fast, _), (_, to_open, _) = fake[0].requests
    # One numbering for the whole request: jane is [EMAIL_1] in the query and in the document.
    assert to_fast["query"] == "who wrote to [EMAIL_1]"
    assert to_fast["documents"] == ["[EMAIL_1] wrote", "[EMAIL_2] called [PHONE_1]", "nothing here"]
    assert (to_open["query"], to_open["documents"]) == (QUERY, DOCUMENTS)
    texts = {r["index"]: r["document"]["text"] for r in guarded.json()["results"]}
    assert texts == dict(enumerate(DOCUMENTS))  # the client's own texts, not the placeholders
    assert (metric(gw, "mask", "email"), metric(gw, "mask", "phone")) == (3.0, 1.0)


def test_a_bi_encoders_rerank_and_embeddings_are_masked_input_by_input(
        gw: Gateway, upstream: UpstreamProcess) -> None:
    with gw.http() as http:
        ranked = http.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": DOCUMENTS})
        embedded = http.post("/v1/embeddings", json={"model": "emb", "input": ["mail bob@home.net", "plain"]})
        single = http.post("/v1/embeddings", json={"model": "emb", "input": "call (415) 555-0132"})
    assert ranked.status_code == embedded.status_code == single.status_code == 200, ranked.text
    sent = [body["input"] for body in upstream.stats()["bodies"]]
    # Each input embedded alone is numbered alone: its vector does not depend on the call's other inputs.
    assert sent == [["who wrote to [EMAIL_1]", "[EMAIL_1] wrote", "[EMAIL_1] called [PHONE_1]", "nothing here"],
                    ["mail [EMAIL_1]", "plain"], "call [PHONE_1]"]
    assert [r["document"]["text"] for r in sorted(ranked.json()["results"], key=lambda r: r["index"])] == DOCUMENTS
    assert len(embedded.json()["data"]) == 2 and metric(gw, "mask", "email") == 4.0


@pytest.mark.parametrize("model", ["fast", "emb"])
def test_a_blocked_rerank_is_the_400_a_chat_gets_naming_its_field(
        gw: Gateway, fake: tuple[FakeReranker, str], upstream: UpstreamProcess, model: str) -> None:
    with gw.http() as http:
        chat = http.post("/v1/chat/completions", json={"model": "chat", "messages": [
            {"role": "user", "content": "status of Project Bluebird?"}]})
        in_query = http.post("/v1/rerank", json={"model": model, "query": "project  bluebird", "documents": ["a"]})
        in_document = http.post("/rerank", json={"model": model, "query": "q", "documents": ["a", "PROJECT BLUEBIRD"]})
        card = http.post("/v1/rerank", json={"model": model, "query": "q", "documents": ["pay 4111-1111-1111-1111"]})
        elsewhere = http.post("/v1/rerank", json={"model": "open", "query": "project bluebird", "documents": ["a"]})
    assert chat.status_code == 400 and elsewhere.status_code == 200
    for refused, param in ((in_query, "query"), (in_document, "documents[1]"), (card, "documents[0]")):
        error = refused.json()["error"]
        assert refused.status_code == 400 and (error["type"], error["code"]) == (
            chat.json()["error"]["type"], chat.json()["error"]["code"]) == ("invalid_request_error", "guardrail_blocked")
        assert error["param"] == param and "bluebird" not in error["message"].lower()
        row = gw.row(refused.headers["x-pitstop-request-id"])
        assert (row["endpoint"], row["status"], row["http_status"], row["cost_usd"]) == ("rerank", "error", 400, 0)
    assert "credit card values" in card.json()["error"]["message"]
    assert len(fake[0].requests) == 1 and not upstream.stats()["bodies"]  # only the unguarded model's call
    assert metric(gw, "block", "pattern", "no-codename") == 3.0  # the chat and the two reranks


def test_blocked_embeddings_name_the_input_the_client_sent_even_past_the_cache(
        fake: tuple[FakeReranker, str], upstream: UpstreamProcess, tmp_path: Path) -> None:
    """With the response cache on, only the inputs it lacks are sent: the refusal still names the client's
    place for the blocked one (and for a bi-encoder's rerank, its document)."""
    with running_gateway(config(tmp_path, fake[1], upstream, cache={})) as gateway, gateway.http() as http:
        warm = http.post("/v1/embeddings", json={"model": "emb", "input": ["kept one", "kept two"]})
        mixed = http.post("/v1/embeddings", json={"model": "emb", "input": ["kept one", "kept two", "project bluebird"]})
        single = http.post("/v1/embeddings", json={"model": "emb", "input": "project bluebird"})
        ranked = http.post("/v1/rerank", json={"model": "emb", "query": "kept one",
                                               "documents": ["kept two", "a Project Bluebird memo"]})
    assert warm.status_code == 200 and len(upstream.stats()["bodies"]) == 1
    assert [(r.status_code, r.json()["error"]["param"]) for r in (mixed, single, ranked)] == [
        (400, "input[2]"), (400, "input"), (400, "documents[1]")]
    assert json.dumps(upstream.stats()["bodies"]).lower().count("bluebird") == 0
