"""A Batch API job of /v1/moderations lines over a real socket (the openai SDK's files and batches): each
line served by the live endpoint's code (gateway/moderation.py serve_moderation_body), so its answer, or
its error, is what the same body sent to /v1/moderations gets; each line leaves an `endpoint: moderation`
row with the batch's id and spends the batch's key's budget; a key's model list refuses a line as it refuses
the request; a line for another endpoint is a 400 naming the input file."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from storage.keys import KeyStore
from tests.gateway.harness import Gateway, gateway_config, running_gateway
from tests.gateway.test_gateway_batches import ended, jsonl
from tests.gateway.test_gateway_moderation import MODEL, estimated_cost, moderation_entry
from tests.gateway.upstream import UpstreamProcess

AUTH = {"require_keys": True, "master_key": "master"}


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a = upstream_processes[0]
    models = [moderation_entry(MODEL, a.api_base), moderation_entry("other", a.api_base)]
    with running_gateway(gateway_config(tmp_path_factory.mktemp("moderation-batches"), models, auth=AUTH)) as gateway:
        yield gateway


def line(custom_id: str, body: dict, url: str = "/v1/moderations") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


PARTS = [{"type": "text", "text": "see [flag:violence/graphic]"},
         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
LINES = [
    line("string", {"model": MODEL, "input": "a threat [flag:harassment/threatening]"}),
    line("list", {"input": ["calm", "[flag:illicit] plan"]}, "/moderations"),  # the default model, the bare path
    line("parts", {"model": MODEL, "input": PARTS}),
    line("empty", {"model": MODEL, "input": ""}),
    line("mixed", {"model": MODEL, "input": ["a", {"type": "text", "text": "b"}]}),
    line("not-this-key", {"model": "other", "input": "x"}),  # the key lists the default model only
]


def test_moderation_lines_are_answered_as_the_live_endpoint_answers_them(gw: Gateway, upstreams: tuple) -> None:
    keys = KeyStore(gw.storage_url)
    key_id, secret = keys.create("batch", budget_usd=1.0, models=[MODEL])
    with gw.openai(api_key=secret) as client:
        uploaded = client.files.create(file=("moderations.jsonl", jsonl(LINES)), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/moderations", completion_window="24h")
        done = ended(client, batch.id)
        assert done.output_file_id is not None and done.error_file_id is not None
        output = [json.loads(text) for text in client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(text) for text in client.files.content(done.error_file_id).text.splitlines()]
    sent = [body["input"] for body in upstreams[0].stats()["bodies"]]
    with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:  # each line's body, sent live
        live = {item["custom_id"]: http.post(item["url"], json=item["body"]) for item in LINES}
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 3)
    assert [r["custom_id"] for r in output] == ["string", "list", "parts"]
    assert [r["custom_id"] for r in errors] == ["empty", "mixed", "not-this-key"]
    for record in output + errors:  # the same answer (the upstream's own id aside), or the same error
        answer, expected = record["response"], live[record["custom_id"]]
        assert answer["status_code"] == expected.status_code
        assert {k: v for k, v in answer["body"].items() if k != "id"} == {
            k: v for k, v in expected.json().items() if k != "id"}
    assert [r["response"]["body"]["results"][0]["flagged"] for r in output] == [True, False, True]
    assert output[1]["response"]["body"]["results"][1]["categories"]["illicit"] is True
    assert [(r["response"]["status_code"], r["response"]["body"]["error"]["param"]) for r in errors] == [
        (400, "input"), (400, "input[1]"), (403, "model")]
    assert sorted(map(json.dumps, sent)) == sorted(json.dumps(item["body"]["input"]) for item in LINES[:3])
    assert all("priority" not in body for body in upstreams[0].stats()["bodies"])  # the batch's, not sent on

    rows = gw.rows([r["response"]["request_id"] for r in output + errors])
    assert len(rows) == 6 and {(row["endpoint"], row["batch_id"]) for row in rows} == {("moderation", batch.id)}
    served = {row["request_id"]: row for row in rows if row["status"] == "ok"}
    texts = {"string": [LINES[0]["body"]["input"]], "list": LINES[1]["body"]["input"], "parts": [PARTS[0]["text"]]}
    for record in output:  # billed as the live request is: its texts' estimate at the input price
        row = served[record["response"]["request_id"]]
        assert row["cost_usd"] == pytest.approx(estimated_cost(*texts[record["custom_id"]]))
        assert row["extra"]["flagged"] is True  # each line holds a flagged text
    live_rows = gw.rows([r.headers["x-pitstop-request-id"] for r in live.values()])
    spent = sum(row["cost_usd"] for row in rows + live_rows)
    # the batch's lines and the live requests, in the key's row with their rows (gw.rows flushed)
    assert keys.get(key_id).spent_usd == pytest.approx(spent)  # type: ignore[union-attr]


@pytest.mark.parametrize("endpoint, url, param", [
    ("/v1/moderations", "/v1/embeddings", "input_file_id"),  # a line for another endpoint
    ("/v1/embeddings", "/v1/moderations", "input_file_id"),  # nor a moderation line in an embeddings batch
])
def test_a_batch_of_another_endpoints_lines_is_a_400(gw: Gateway, endpoint: str, url: str, param: str) -> None:
    _, secret = KeyStore(gw.storage_url).create(f"bad {endpoint} {url}")
    with gw.openai(api_key=secret) as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl([line("a", {"input": "x"}, url)])), purpose="batch")
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                  completion_window="24h")
    error = refused.value.body
    assert isinstance(error, dict) and (error["param"], error["type"]) == (param, "invalid_request_error")
