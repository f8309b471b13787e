"""Requests in flight on a deployment its health checks take out (gateway/health_rescue.py), over real sockets:
each whole answer, and each stream without its first chunk, is answered by the model's other deployment once
the probes find the first out, and the first call's connection is closed; a stream with its first chunk is
left alone; with no other deployment the request goes to its fallback model, or with none keeps waiting; a
deployment coming back triggers nothing, a second outage triggers again; with hedging on, a request whose
hedge is in flight on a deployment in routing is not rescued as well (at most max_hedges + 1 extra calls);
`rescue_in_flight: false` turns it off."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.engine.serving import serve_in_thread
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_health_checks import CHECKS, Flaky, metric

HUNG = {"request_timeout_s": 60.0, "num_retries": 2}  # a request not rescued waits far past the tests' guards


@dataclass
class Held(Flaky):
    """A Flaky server whose probes are set apart from its answers: while `mode == "hung"` each chat request is
    held (a stream after its first chunk where `first_chunk`) until the mode changes or its client leaves
    (counted in `left`); /models answers while `probes_ok`. Its answers say "from-{name}"."""

    name: str = "h"
    probes_ok: bool = True
    first_chunk: bool = False
    left: int = 0

    async def models(self, request: Request) -> JSONResponse:
        if self.probes_ok:
            return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})
        return JSONResponse({"error": {"message": "down", "type": "server_error"}}, status_code=503)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.posts += 1
        if body.get("stream"):
            return StreamingResponse(self._chunks(), media_type="text/event-stream")
        while self.mode == "hung":
            if await request.is_disconnected():
                self.left += 1
                return Response(status_code=499)
            await asyncio.sleep(0.02)
        return JSONResponse({
            "id": "chatcmpl-h", "object": "chat.completion", "created": int(time.time()), "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"from-{self.name}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:  # starlette cancels the stream when its client leaves
            if not self.first_chunk:
                await self._while_hung()
            yield _chunk(f"from-{self.name}")
            await self._while_hung()
            yield _chunk(" done", "stop")
            yield b"data: [DONE]\n\n"
        except BaseException:
            self.left += 1
            raise

    async def _while_hung(self) -> None:
        while self.mode == "hung":
            await asyncio.sleep(0.02)


def _chunk(text: str, finish: str | None = None) -> bytes:
    chunk = {"id": "chatcmpl-h", "object": "chat.completion.chunk", "created": int(time.time()), "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


@pytest.fixture
def held() -> Iterator[tuple[Held, Held, str, str]]:
    first, second = Held(name="a", mode="hung"), Held(name="b")
    with serve_in_thread(first.app()) as url_a, serve_in_thread(second.app()) as url_b:
        yield first, second, f"{url_a}/v1", f"{url_b}/v1"


def healthy(gw: Gateway, deployment: str) -> float | None:
    with gw.http() as http:
        return metric(http.get("/metrics").text, "pitstop_deployment_healthy", deployment=deployment)


def rescues(gw: Gateway, outcome: str) -> float | None:
    with gw.http() as http:
        return metric(http.get("/metrics").text, "pitstop_health_rescues_total", model="m", outcome=outcome)


def ask(gw: Gateway, pool: ThreadPoolExecutor, n: int, stream: bool = False) -> list[Future[tuple[str, str]]]:
    """`n` requests of m sent at once; each future its answer's text and request id."""
    def one() -> tuple[str, str]:
        client = gw.openai()
        messages = [{"role": "user", "content": "hi"}]
        if not stream:
            raw = client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=4)
            return raw.parse().choices[0].message.content, raw.headers["x-pitstop-request-id"]
        with client.chat.completions.with_streaming_response.create(model="m", messages=messages, max_tokens=4,
                                                                     stream=True) as raw:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            return text, raw.headers["x-pitstop-request-id"]
    return [pool.submit(one) for _ in range(n)]


def strand(gw: Gateway, first: Held, second: Held, pool: ThreadPoolExecutor, n: int,
           stream: bool = False) -> list[Future[tuple[str, str]]]:
    """`n` requests held on `first` (m#0) while `second` (m#1) is out of routing, then `second` back: the
    requests wait on `first`, still in routing; its coming back rescued none of them."""
    second.probes_ok = False
    wait_until(lambda: healthy(gw, "m#1") == 0, what="m#1 out")
    posted = first.posts
    futures = ask(gw, pool, n, stream)
    wait_until(lambda: first.posts == posted + n, what="the requests held on m#0")
    second.probes_ok = True
    wait_until(lambda: healthy(gw, "m#1") == 1, what="m#1 back")
    assert not any(f.done() for f in futures) and healthy(gw, "m#0") == 1
    return futures


def two(held: tuple[Held, Held, str, str], tmp_path: Path, **sections: object) -> dict:
    return gateway_config(tmp_path, [model_entry("m", held[2]), model_entry("m", held[3])], server=HUNG,
                          health_checks=CHECKS, **sections)


def test_whole_answers_and_streams_without_a_first_chunk_are_rescued_on_each_outage(
        held: tuple[Held, Held, str, str], tmp_path: Path) -> None:
    first, second = held[:2]
    with running_gateway(two(held, tmp_path)) as gw, ThreadPoolExecutor(8) as pool:
        for round_, stream in ((1, False), (2, True)):  # the second round a second outage of m#0
            futures = strand(gw, first, second, pool, 3, stream)
            first.probes_ok = False
            answers = [f.result(timeout=30) for f in futures]
            assert [text for text, _ in answers] == ["from-b" + (" done" if stream else "")] * 3
            for _, request_id in answers:
                row = gw.row(request_id)
                assert row["deployment"] == "m#1"
                assert row["extra"]["rescue"] == {"from": "m#0", "to": "m#1", "outcome": "won"}
            wait_until(lambda: first.left == 3 * round_, what="the first calls' connections closed")  # noqa: B023
            assert rescues(gw, "won") == 3 * round_
            first.probes_ok = True
            wait_until(lambda: healthy(gw, "m#0") == 1, what="m#0 back")
        assert first.posts == 6 and rescues(gw, "lost") is None and rescues(gw, "no_deployment") is None


def test_a_stream_with_its_first_chunk_is_left_alone(held: tuple[Held, Held, str, str], tmp_path: Path) -> None:
    first, second = held[:2]
    first.first_chunk = True
    with running_gateway(two(held, tmp_path)) as gw, ThreadPoolExecutor(4) as pool:
        futures = strand(gw, first, second, pool, 2, stream=True)
        first.probes_ok = False
        wait_until(lambda: healthy(gw, "m#0") == 0, what="m#0 out")
        time.sleep(0.5)  # a rescue, were one due, would have been sent by now
        assert not any(f.done() for f in futures) and first.left == 0 and second.posts == 0
        first.mode = "up"
        answers = [f.result(timeout=30) for f in futures]
        assert [text for text, _ in answers] == ["from-a done"] * 2
        assert all("rescue" not in gw.row(request_id)["extra"] for _, request_id in answers)
        assert rescues(gw, "won") is None and rescues(gw, "no_deployment") is None


def test_with_no_other_deployment_the_requests_go_to_the_fallback(held: tuple[Held, Held, str, str],
                                                                  tmp_path: Path) -> None:
    first, second = held[:2]
    models = [model_entry("m", held[2]), model_entry("backup", held[3])]
    raw = gateway_config(tmp_path, models, server=HUNG, health_checks=CHECKS, fallbacks={"on_error": {"m": ["backup"]}})
    with running_gateway(raw) as gw, ThreadPoolExecutor(4) as pool:
        futures = ask(gw, pool, 2)
        wait_until(lambda: first.posts == 2, what="the requests held on m#0")
        first.probes_ok = False
        answers = [f.result(timeout=30) for f in futures]
        assert [text for text, _ in answers] == ["from-b"] * 2
        for _, request_id in answers:
            row = gw.row(request_id)
            assert row["model"] == "backup" and row["extra"]["fallback"]["failed"][0]["code"] == "deployment_down"
        wait_until(lambda: first.left == 2, what="the first calls' connections closed")
        assert rescues(gw, "fallback") == 2 and rescues(gw, "no_deployment") is None


def test_with_nowhere_else_the_request_keeps_waiting(held: tuple[Held, Held, str, str], tmp_path: Path) -> None:
    first = held[0]
    raw = gateway_config(tmp_path, [model_entry("m", held[2])], server=HUNG, health_checks=CHECKS)
    with running_gateway(raw) as gw, ThreadPoolExecutor(2) as pool:
        futures = ask(gw, pool, 1)
        wait_until(lambda: first.posts == 1, what="the request held on m#0")
        first.probes_ok = False
        wait_until(lambda: rescues(gw, "no_deployment") == 1, what="the rescue found nowhere to go")
        assert not futures[0].done() and first.left == 0
        first.mode = "up"
        text, request_id = futures[0].result(timeout=30)
        assert text == "from-a"
        assert gw.row(request_id)["extra"]["rescue"] == {"from": "m#0", "to": None, "outcome": "no_deployment"}


def test_a_hedge_in_flight_on_a_deployment_in_routing_is_not_rescued_as_well(held: tuple[Held, Held, str, str],
                                                                             tmp_path: Path) -> None:
    first, second = held[:2]
    second.mode = "hung"
    hedging = {"enabled": True, "delay_s": 0.2, "max_hedges": 1}
    with running_gateway(two(held, tmp_path, hedging=hedging)) as gw, ThreadPoolExecutor(2) as pool:
        futures = ask(gw, pool, 1)
        wait_until(lambda: first.posts == 1 and second.posts == 1, what="the request and its hedge held")
        first.probes_ok = False
        wait_until(lambda: healthy(gw, "m#0") == 0, what="m#0 out")
        time.sleep(0.5)  # a rescue, were one due, would have been sent by now
        second.mode = "up"
        text, request_id = futures[0].result(timeout=30)
        extra = gw.row(request_id)["extra"]
        assert text == "from-b" and extra["hedge"]["hedges"] == 1 and "rescue" not in extra
        assert first.posts + second.posts == 2 and rescues(gw, "no_deployment") is None


def test_rescue_in_flight_false_turns_it_off(held: tuple[Held, Held, str, str], tmp_path: Path) -> None:
    first, second = held[:2]
    checks = {**CHECKS, "rescue_in_flight": False}
    raw = gateway_config(tmp_path, [model_entry("m", held[2]), model_entry("m", held[3])], server=HUNG,
                         health_checks=checks)
    with running_gateway(raw) as gw, ThreadPoolExecutor(2) as pool:
        futures = strand(gw, first, second, pool, 1)
        first.probes_ok = False
        wait_until(lambda: healthy(gw, "m#0") == 0, what="m#0 out")
        time.sleep(0.5)  # a rescue, were one due, would have been sent by now
        assert not futures[0].done() and second.posts == 0 and first.left == 0
        first.mode = "up"
        text, request_id = futures[0].result(timeout=30)
        assert text == "from-a" and "rescue" not in gw.row(request_id)["extra"]
