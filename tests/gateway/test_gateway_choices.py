"""A request for several choices (`n`), passed to an upstream that answers them: the client gets every
choice; the outcome row keeps the first choice's text (a stream interleaves the choices' chunks, and
the row used to hold them mixed into one text) and the usage of all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.engine.serving import serve_in_thread
from tests.gateway.harness import gateway_config, model_entry, running_gateway

USAGE = {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


async def _chat(request: Request) -> Response:
    body = await request.json()
    if not body.get("stream"):
        return JSONResponse({"id": "x", "object": "chat.completion", "usage": USAGE, "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}
            for i in range(body["n"])]})

    async def events() -> Iterator[bytes]:  # type: ignore[misc]
        for word in ("one", " two"):
            for i in range(body["n"]):  # interleaved, as OpenAI and vLLM stream n > 1
                yield f'data: {json.dumps({"choices": [{"index": i, "delta": {"content": f"{word}-{i}"}}]})}\n\n'.encode()
        for i in range(body["n"]):
            yield f'data: {json.dumps({"choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]})}\n\n'.encode()
        yield f'data: {json.dumps({"choices": [], "usage": USAGE})}\n\n'.encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")  # type: ignore[arg-type]


def test_several_choices_reach_the_client_and_the_row_keeps_the_first(tmp_path: Path) -> None:
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    with serve_in_thread(app) as url, running_gateway(gateway_config(tmp_path, [model_entry(
            "m", url + "/v1", provider="hosted_vllm", transport="auto")])) as gw, gw.openai() as client:
        messages = [{"role": "user", "content": "hi"}]
        whole = client.chat.completions.with_raw_response.create(model="m", messages=messages, n=2)
        streamed = client.chat.completions.with_raw_response.create(model="m", messages=messages, n=2, stream=True)
        chunks = list(streamed.parse())
    assert [c.message.content for c in whole.parse().choices] == ["answer 0", "answer 1"]
    texts = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
             for i in (0, 1)}
    assert texts == {0: "one-0 two-0", 1: "one-1 two-1"}
    rows = [gw.row(r.headers["x-pitstop-request-id"]) for r in (whole, streamed)]
    assert [r["completion"] for r in rows] == ["answer 0", "one-0 two-0"]
    assert {(r["completion_tokens"], r["status"]) for r in rows} == {(8, "ok")}
