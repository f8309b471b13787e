"""A Batch API job of /v1/rerank lines over a real socket (the openai SDK's files and batches): each line
served by the live endpoint's code, so its answer, or its error, is what the same body sent to
/v1/rerank gets (a fake vLLM cross-encoder, and a bi-encoder on the fake upstream), on any of the
endpoint's paths; each line leaves an `endpoint: rerank` row with the batch's id and spends the batch's
key's budget; a key's model list refuses a line as it refuses the request; a batch made with another
endpoint, or naming an unknown one, is a clear 400."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from storage.keys import KeyStore
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, running_gateway
from tests.gateway.rerankers import FakeReranker
from tests.gateway.test_gateway_batches import ended, jsonl
from tests.gateway.test_gateway_rerank import embedding_model
from tests.gateway.test_gateway_rerank_native import RERANK
from tests.gateway.upstream import UpstreamProcess

QUERY = "where is the red fox"
DOCUMENTS = ["a red fox", "blue sky", "the fox is in the den"]
AUTH = {"require_keys": True, "master_key": "master"}


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeReranker, str]]:
    reranker = FakeReranker("r1")
    with serve_in_thread(reranker.app()) as url:
        yield reranker, url


@pytest.fixture(scope="module")
def gw(fake: tuple[FakeReranker, str], upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    cross = {"model_name": "fast", "model_info": RERANK, "litellm_params": {
        "model": "hosted_vllm/bge-reranker", "api_base": f"{fake[1]}/v1", "api_key": "k", "transport": "direct"}}
    models = [cross, {**cross, "model_name": "other"}, embedding_model("emb", upstream_processes[0].api_base)]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("rerank-batches"), models, auth=AUTH)) as gateway:
        yield gateway


def line(custom_id: str, body: dict, url: str = "/v1/rerank") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


GOOD = {"model": "fast", "query": QUERY, "documents": DOCUMENTS, "top_n": 2}
LINES = [
    line("cross", GOOD),
    line("bi-encoder", {"model": "emb", "query": "x y", "documents": ["w w", "w"], "return_documents": False},
         "/rerank"),
    line("objects", {"model": "fast", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS]}, "/v2/rerank"),
    line("top-n", {**GOOD, "top_n": 0}),
    line("no-documents", {**GOOD, "documents": []}),
    line("query", {**GOOD, "query": ["not", "a string"]}),
    line("not-this-key", {**GOOD, "model": "other"}),  # the key lists fast and emb only
]


def test_rerank_lines_are_answered_as_the_live_endpoint_answers_them(
        gw: Gateway, fake: tuple[FakeReranker, str], upstreams: tuple) -> None:
    keys = KeyStore(gw.storage_url)
    key_id, secret = keys.create("batch", budget_usd=1.0, models=["fast", "emb"])
    fake[0].requests.clear()
    with gw.openai(api_key=secret) as client:
        uploaded = client.files.create(file=("rerank.jsonl", jsonl(LINES)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/rerank",  # type: ignore[arg-type]
                                      completion_window="24h")
        done = ended(client, batch.id)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = [json.loads(text) for text in client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(text) for text in client.files.content(done.error_file_id).text.splitlines()]
    batch_calls = len(fake[0].requests)
    with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:  # each line's body, sent live
        live = {item["custom_id"]: http.post(item["url"], json=item["body"]) for item in LINES}
    assert batch.endpoint == "/v1/rerank" and done.status == "completed"
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (3, 4)
    assert [r["custom_id"] for r in output] == ["cross", "bi-encoder", "objects"]  # the input's order
    assert [r["custom_id"] for r in errors] == ["top-n", "no-documents", "query", "not-this-key"]
    for record in output + errors:  # the same answer, or the same error in OpenAI's shape
        answer, expected = record["response"], live[record["custom_id"]]
        assert answer["status_code"] == expected.status_code
        unnamed = {k: v for k, v in answer["body"].items() if k != "id"}  # a bi-encoder's id is its request's
        assert unnamed == {k: v for k, v in expected.json().items() if k != "id"}
    assert output[1]["response"]["body"]["id"] == f"rerank-{output[1]['response']['request_id'].removeprefix('req-')}"
    assert [(r["response"]["status_code"], r["response"]["body"]["error"]["param"]) for r in errors] == [
        (400, "top_n"), (400, "documents"), (400, "query"), (403, "model")]
    assert batch_calls == 2 and [body["documents"] for _, body, _ in fake[0].requests[:2]] == [DOCUMENTS] * 2
    assert "priority" not in fake[0].requests[0][1]  # the batch's priority is the gateway's, not sent on

    rows = gw.rows([r["response"]["request_id"] for r in output + errors])
    assert len(rows) == 7 and {(row["endpoint"], row["batch_id"]) for row in rows} == {("rerank", batch.id)}
    assert sorted(row["status"] for row in rows) == ["error"] * 4 + ["ok"] * 3
    served = {row["request_id"]: row for row in rows if row["status"] == "ok"}
    for record in output:  # billed its input tokens, as the live request is
        row = served[record["response"]["request_id"]]
        assert row["prompt_tokens"] == record["response"]["body"]["usage"]["total_tokens"] > 0
        assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * PRICE_IN)
    live_rows = gw.rows([r.headers["x-pitstop-request-id"] for r in live.values()])
    spent = sum(row["cost_usd"] for row in rows + live_rows)
    # the batch's lines and the live requests, in the key's row with their rows (gw.rows flushed)
    assert keys.get(key_id).spent_usd == pytest.approx(spent)  # type: ignore[union-attr]


@pytest.mark.parametrize("endpoint, url, param", [
    ("/v1/rerank", "/v1/embeddings", "input_file_id"),  # a line for another endpoint
    ("/v1/embeddings", "/v2/rerank", "input_file_id"),  # nor a rerank line in an embeddings batch
    ("/v1/score", "/v1/rerank", "endpoint"),  # no such endpoint: refused as OpenAI refuses one
])
def test_a_batch_of_another_endpoints_lines_or_an_unknown_endpoint_is_a_400(
        gw: Gateway, endpoint: str, url: str, param: str) -> None:
    _, secret = KeyStore(gw.storage_url).create(f"bad {endpoint} {url}")
    with gw.openai(api_key=secret) as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl([line("a", GOOD, url)])), purpose="batch")
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")
    error = refused.value.body
    assert isinstance(error, dict) and (error["param"], error["type"]) == (param, "invalid_request_error")
    if param == "endpoint":
        assert "/v1/rerank" in error["message"] and error["code"] == "invalid_value"
