"""An upstream that answers outside OpenAI's shape (a JSON list, a choice that is a string, an error
object with a 200, a stream event that is a list, a usage of -5 tokens) gets the client a 502 in
OpenAI's shape, retried on another deployment where the model has one, or, for a usage the gateway
cannot bill from, the answer with the gateway's estimate in the row. Text holding a UTF-16 surrogate
escaped alone (no UTF-8 encoder takes it) is served as it came and logged repaired. Never a 500 or a
reset connection, and every request leaves its row; over the direct HTTP transport and through litellm."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.engine.serving import serve_in_thread
from tests.gateway.harness import PRICE_IN, Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

ANSWER = '{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}'
MISSHAPEN = {  # whole answers the gateway must not serve
    "list": "[1,2,3]",
    "string": '"hello"',
    "no-choices": '{"id":"x","object":"chat.completion"}',
    "choices-string": '{"id":"x","choices":"abc"}',
    "choice-string": '{"id":"x","choices":["abc"]}',
    "message-string": '{"id":"x","choices":[{"index":0,"message":"hi","finish_reason":"stop"}]}',
    "content-number": '{"choices":[{"index":0,"message":{"role":"assistant","content":5},"finish_reason":"stop"}]}',
    "tool-calls-numbers": '{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[5]},'
                          '"finish_reason":"tool_calls"}]}',
    "error-with-200": '{"error":{"message":"boom"}}',
    "not-json": '{"choices":[],"usage":{"prompt_tokens":NaN}}',  # NaN: Python reads it, no client can
}
UNBILLABLE = {  # good answers with a usage nobody can bill from
    "usage-negative": '{"prompt_tokens":-5,"completion_tokens":7}',
    "usage-huge": '{"prompt_tokens":1e300,"completion_tokens":1e300}',
    "usage-string": '"lots"',
    "usage-details-string": '{"prompt_tokens":1,"completion_tokens":1,"prompt_tokens_details":"x"}',
}
MISSHAPEN_STREAMS = {
    "stream-list": [b"data: [1,2]\n\n", b"data: [DONE]\n\n"],
    "stream-choices-string": [b'data: {"choices":"x"}\n\n', b"data: [DONE]\n\n"],
    "stream-delta-string": [b'data: {"choices":[{"index":0,"delta":"x"}]}\n\n', b"data: [DONE]\n\n"],
    "stream-tool-calls-numbers": [b'data: {"choices":[{"index":0,"delta":{"tool_calls":[5]}}]}\n\n',
                                  b"data: [DONE]\n\n"],
}
# No finish_reason and a usage that is a string: served, and logged as ended, not as a client that left.
ODD_STREAM = [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n', b'data: {"choices":[],"usage":"x"}\n\n',
              b"data: [DONE]\n\n"]
# Half an emoji alone ("\ud83d"), as a JavaScript server that splits a string between chunks sends it.
SURROGATES = {
    "surrogate": '{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"a \\ud83d b"},'
                 '"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}',
    "surrogate-error": '{"error":{"message":"bad \\udc80 input","type":"invalid_request_error"}}',
}
SURROGATE_STREAM = [b'data: {"choices":[{"index":0,"delta":{"content":"x\\ud83d"}}]}\n\n',
                    b'data: {"choices":[{"index":0,"delta":{"content":"\\ude00y"},"finish_reason":"stop"}]}\n\n',
                    b"data: [DONE]\n\n"]


async def _chat(request: Request) -> Response:
    mode = (await request.json())["messages"][-1]["content"]
    if mode in SURROGATES:
        return Response(SURROGATES[mode], media_type="application/json", status_code=400 if "error" in mode else 200)
    if mode in MISSHAPEN_STREAMS or mode in ("odd-stream", "surrogate-stream"):
        events = {"odd-stream": ODD_STREAM, "surrogate-stream": SURROGATE_STREAM}.get(mode) or MISSHAPEN_STREAMS[mode]

        async def stream() -> Iterator[bytes]:  # type: ignore[misc]
            for event in events:
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream")  # type: ignore[arg-type]
    if mode in UNBILLABLE:
        return Response(f'{{"id":"x","choices":[{ANSWER}],"usage":{UNBILLABLE[mode]}}}', media_type="application/json")
    return Response(MISSHAPEN[mode], media_type="application/json")


MISSHAPEN_EMBEDDINGS = {
    "list": "[1,2,3]",
    "no-data": '{"object":"list"}',
    "data-numbers": '{"data":[1,2]}',
    "embedding-number": '{"data":[{"index":0,"embedding":5}]}',
    "error-with-200": '{"error":{"message":"boom"}}',
}


async def _embeddings(request: Request) -> Response:
    mode = (await request.json())["input"]  # litellm sends a string input as a one-string list
    return Response(MISSHAPEN_EMBEDDINGS[mode[0] if isinstance(mode, list) else mode], media_type="application/json")


async def _models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "bad"}]})


@pytest.fixture(scope="module")
def bad_api_base() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]), Route("/v1/models", _models),
                            Route("/v1/embeddings", _embeddings, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield url + "/v1"


@pytest.fixture
def gw(bad_api_base: str, upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Gateway]:
    good = upstreams[0]
    models = [model_entry("direct", bad_api_base, provider="hosted_vllm", transport="auto"),
              model_entry("litellm", bad_api_base, provider="hosted_vllm"),  # transport: litellm
              model_entry("mixed", bad_api_base, provider="hosted_vllm", transport="auto"),
              model_entry("mixed", good.api_base)]
    with running_gateway(gateway_config(tmp_path, models)) as gateway:
        yield gateway


def ask(http: httpx.Client, model: str, mode: str, stream: bool = False, **extra: object) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "stream": stream,
                                                   "messages": [{"role": "user", "content": mode}], **extra})


def test_a_misshapen_answer_is_a_502_in_openai_shape_and_leaves_its_row(gw: Gateway) -> None:
    with gw.http() as http:
        direct = {mode: ask(http, "direct", mode) for mode in MISSHAPEN}
        direct |= {mode: ask(http, "direct", mode, stream=True) for mode in MISSHAPEN_STREAMS}
        through_litellm = {mode: ask(http, "litellm", mode) for mode in MISSHAPEN}
        through_litellm |= {mode: ask(http, "litellm", mode, stream=True) for mode in MISSHAPEN_STREAMS}
    for mode, response in direct.items():
        assert response.status_code == 502, (mode, response.text)
        assert response.json()["error"]["code"] == "bad_upstream_response", mode
    for mode, response in through_litellm.items():  # litellm reads some its own way (a 400, or a repair)
        if response.status_code == 200:
            assert mode.startswith("stream") and response.text.rstrip().endswith("data: [DONE]"), mode
            continue
        assert response.status_code in (400, 502), (mode, response.text)
        assert "Traceback" not in response.json()["error"]["message"]  # litellm's, not the client's
    responses = [*direct.values(), *through_litellm.values()]
    rows = {r["request_id"]: r for r in gw.rows()}
    assert sorted(rows) == sorted(r.headers["x-pitstop-request-id"] for r in responses)
    assert {(rows[r.headers["x-pitstop-request-id"]]["status"], rows[r.headers["x-pitstop-request-id"]]["cost_usd"])
            for r in direct.values()} == {("error", 0.0)}


def test_a_usage_nobody_can_bill_from_is_replaced_by_the_estimate(gw: Gateway) -> None:
    with gw.http() as http:
        answers = {mode: ask(http, "direct", mode) for mode in UNBILLABLE}
        odd = ask(http, "direct", "odd-stream", stream=True, stream_options={"include_usage": True})
        litellm = {mode: ask(http, "litellm", mode) for mode in UNBILLABLE}
    rows = {r["request_id"]: r for r in gw.rows()}
    for mode, response in answers.items():
        assert response.status_code == 200, (mode, response.text)
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "hi"
        row = rows[response.headers["x-pitstop-request-id"]]  # the usage served is what the row is charged
        assert body["usage"] == {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
                                 "total_tokens": row["prompt_tokens"] + row["completion_tokens"]}
    assert odd.status_code == 200 and odd.text.rstrip().endswith("data: [DONE]")
    events = [json.loads(line[6:]) for line in odd.text.splitlines() if line.startswith("data: {")]
    assert [e["choices"] == [] for e in events] == [False, True]  # the answer, then one usage chunk
    odd_row = rows[odd.headers["x-pitstop-request-id"]]
    assert events[-1]["usage"] == {"prompt_tokens": odd_row["prompt_tokens"],
                                   "completion_tokens": odd_row["completion_tokens"],
                                   "total_tokens": odd_row["prompt_tokens"] + odd_row["completion_tokens"]}
    assert all(r.status_code in (200, 502) for r in litellm.values())  # litellm refuses some itself
    for response in [*answers.values(), odd]:
        row = rows[response.headers["x-pitstop-request-id"]]
        assert (row["status"], row["http_status"]) == ("ok", 200)
        assert row["extra"]["usage_estimated"] is True and 0 < row["prompt_tokens"] < 100
        assert row["cost_usd"] < 1000 * PRICE_IN
    assert len(rows) == len(answers) + 1 + len(litellm)


def test_a_misshapen_answer_is_retried_on_another_deployment(gw: Gateway) -> None:
    """`mixed` lists the misbehaving deployment first: the first request tries it, then the good one."""
    with gw.http() as http:
        whole = ask(http, "mixed", "list")
        streamed = ask(http, "mixed", "stream-list", stream=True)
    assert whole.status_code == 200 and whole.json()["choices"][0]["message"]["content"].startswith("from-a")
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    assert "from-a" in "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_text_with_a_lone_surrogate_is_served_as_sent_and_logged_repaired(gw: Gateway) -> None:
    """The answer, the stream and the upstream's error reach the client escaped as the upstream sent
    them (they were 500s); the row's completion joins the split pair back into its emoji, and a
    surrogate alone becomes U+FFFD (the rows were lost: no UTF-8 encoder takes them)."""
    served = {}
    with gw.http() as http:
        for model in ("direct", "litellm"):
            served[model] = (ask(http, model, "surrogate"), ask(http, model, "surrogate-stream", stream=True),
                             ask(http, model, "surrogate-error"))
    rows = {r["request_id"]: r for r in gw.rows()}
    for model, (whole, streamed, refused) in served.items():
        assert whole.status_code == 200, (model, whole.text)
        assert whole.json()["choices"][0]["message"]["content"] == "a \ud83d b"
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]"), (model, streamed.text)
        events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) \
            == "x\ud83d\ude00y"
        assert refused.status_code == 400, (model, refused.text)
        assert rows[whole.headers["x-pitstop-request-id"]]["completion"] == "a \ufffd b"
        assert rows[streamed.headers["x-pitstop-request-id"]]["completion"] == "x\U0001f600y"
        assert rows[refused.headers["x-pitstop-request-id"]]["status"] == "error"
    assert "bad \udc80 input" in served["direct"][2].json()["error"]["message"]
    assert "bad \ufffd input" in rows[served["direct"][2].headers["x-pitstop-request-id"]]["error"]
    assert len(rows) == 6


def test_a_misshapen_embeddings_answer_is_a_502_and_leaves_its_row(gw: Gateway) -> None:
    with gw.http() as http:
        direct = {mode: http.post("/v1/embeddings", json={"model": "direct", "input": mode})
                  for mode in MISSHAPEN_EMBEDDINGS}
        through_litellm = {mode: http.post("/v1/embeddings", json={"model": "litellm", "input": mode})
                           for mode in MISSHAPEN_EMBEDDINGS}
    for mode, response in direct.items():
        assert response.status_code == 502 and response.json()["error"]["code"] == "bad_upstream_response", mode
    for mode, response in through_litellm.items():  # litellm refuses some itself
        assert response.status_code in (400, 502), (mode, response.text)
        assert "Traceback" not in response.json()["error"]["message"]
    rows = gw.rows()
    assert len(rows) == 2 * len(MISSHAPEN_EMBEDDINGS) and {r["status"] for r in rows} == {"error"}
    assert {r["endpoint"] for r in rows} == {"embedding"} and {r["cost_usd"] for r in rows} == {0.0}
