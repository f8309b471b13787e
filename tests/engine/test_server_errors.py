"""Server error paths over a real socket: every bad request is a 4xx in OpenAI's error shape (never
a 500), client disconnects abort their requests, a crashed engine answers 503. Runs on a fake
runner that takes a few milliseconds a step, with the byte tokenizer."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from engine.async_engine import AsyncEngine
from engine.byte_tokenizer import ByteTokenizer
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.server.app import create_app
from tests.engine.serving import SlowRunner, serve_in_thread

MODEL = "fake"


def fake_engine(runner: SlowRunner) -> AsyncEngine:
    config = EngineConfig(block_size=4, num_blocks=256, max_model_len=256, max_num_seqs=8, max_num_batched_tokens=256)
    return AsyncEngine(LLMEngine(config, runner, tokenizer=ByteTokenizer()), vocab_size=128)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, AsyncEngine]]:
    engine = fake_engine(SlowRunner(step_s=0.003))
    with serve_in_thread(create_app(engine, MODEL)) as url:
        yield url, engine


@pytest.fixture(scope="module")
def url(served: tuple[str, AsyncEngine]) -> str:
    return served[0]


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("invalid_request_error" if status in (400, 413) else error["type"])
    if param is not None:
        assert error["param"] == param, error
    return error


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "hello", "max_tokens": 2} | fields


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | fields


@pytest.mark.parametrize(("body", "param"), [
    (completion(n=65), "n"),
    (completion(n=0), "n"),
    (completion(temperature=3), "temperature"),
    (completion(temperature="hot"), "temperature"),
    (completion(top_p=0), "top_p"),
    (completion(max_tokens=0), "max_tokens"),
    (completion(max_tokens=2.5), "max_tokens"),
    (completion(max_tokens=True), "max_tokens"),
    (completion(stream="yes"), "stream"),
    (completion(stream_options={"include_usage": True}), "stream_options"),
    (completion(stop=["a", "b", "c", "d", "e"]), "stop"),
    (completion(stop=[1]), "stop"),
    (chat(messages=[{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (chat(messages=[{"role": "tool", "content": "r", "tool_call_id": 3}]), "messages[0].tool_call_id"),
    (completion(pin_ttl_s=-1, session_id="s"), "pin_ttl_s"),
    (completion(pin_ttl_s=1e308, session_id="s"), "pin_ttl_s"),  # past a day: 400, not a dead engine
    (completion(pin_ttl_s=5), "pin_ttl_s"),  # no session to pin under
    (completion(session_id=7), "session_id"),
    (completion(priority="high"), "priority"),
    (completion(in_program="yes"), "in_program"),
    (completion(program_start="yesterday"), "program_start"),
    (completion(frobnicate=1), "frobnicate"),
    (completion(frequency_penalty=2.5), "frequency_penalty"),
    (completion(presence_penalty=-3), "presence_penalty"),
    (completion(repetition_penalty=0), "repetition_penalty"),
    (completion(top_k=-2), "top_k"),
    (completion(min_p=1.5), "min_p"),
    (completion(min_tokens=3), "min_tokens"),  # more than max_tokens
    (completion(logit_bias={"a": 1}), "logit_bias"),
    (completion(logit_bias={"-1": 1}), "logit_bias"),
    (completion(logit_bias={"5": 101}), "logit_bias"),
    (completion(logit_bias={"5": "up"}), "logit_bias"),
    (completion(logit_bias={"500": 1}), "logit_bias"),  # outside the vocabulary
    (completion(logit_bias={str(i): 1 for i in range(301)}), "logit_bias"),
    (completion(logit_bias=[5]), "logit_bias"),
    (completion(logprobs=3), "logprobs"),  # this fake runner, as the simulated one, computes none
    (completion(echo=True, logprobs=0), "logprobs"),  # likewise: the prompt's
    (completion(echo="yes"), "echo"),
    (completion(prompt=["a", [1]]), "prompt"),  # a batch of strings or of token lists, not both
    (completion(prompt=["a", ""]), "prompt"),
    (completion(prompt=["a"] * 100, n=30), "prompt"),  # 3,000 sequences
    (completion(prompt=[1, "b"]), "prompt"),
    (completion(prompt=[1, 500]), "prompt"),  # outside the vocabulary
    (completion(prompt=""), "prompt"),
    (completion(prompt="x" * 300), "prompt"),  # longer than the context
    (completion(prompt=None), "prompt"),
    (completion(model=None), "model"),
    (chat(messages=[]), "messages"),
    (chat(messages="hi"), "messages"),
    (chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0].image_url"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]),
     "messages"),  # a text-only model
    (chat(messages=[{"role": "user", "content": "x" * 300}]), "messages"),
    (chat(tools=[{"type": "function"}]), "tools"),
    (chat(tool_choice="required"), "tool_choice"),
    (chat(response_format={"type": "json_object"}), "response_format"),
    (chat(logprobs=True), "logprobs"),  # likewise
    (chat(prompt="hi"), "prompt"),  # a completions field on the chat endpoint
])
def test_bad_requests_are_400s_in_the_openai_shape(url: str, body: dict, param: str):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert_error(httpx.post(f"{url}{path}", json=body), 400, param)


def test_standard_fields_that_change_nothing_are_accepted(url: str):
    body = completion(user="u", metadata={"k": "v"}, seed=3, logprobs=None, echo=False, frequency_penalty=0,
                      presence_penalty=0, logit_bias={}, best_of=1, suffix=None, n=1, priority=2.5, session_id="s")
    assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200
    body = chat(response_format={"type": "text"}, tool_choice="auto", parallel_tool_calls=True, store=False,
                prompt_cache_key="conv-1", safety_identifier="user-1", max_completion_tokens=3, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "developer", "content": [{"type": "text", "text": "be nice"}]},
                          {"role": "user", "content": "hi", "name": "bob"}])
    assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200


def test_malformed_bodies(url: str):
    for raw in (b"{not json", b"[1, 2]", b'"text"', b'{"model": NaN}', b"\xff\xfe", b""):
        assert_error(httpx.post(f"{url}/v1/completions", content=raw), 400)
    assert_error(httpx.post(f"{url}/v1/completions", content=b"[" * 100_000), 400)


def test_a_lone_surrogate_escape_is_400_and_a_pair_is_served(url: str):
    lone = httpx.post(f"{url}/v1/completions", content=rb'{"model": "fake", "prompt": "x\udc01", "max_tokens": 2}')
    assert_error(lone, 400)
    assert lone.json()["error"]["param"] == "prompt"
    pair = httpx.post(f"{url}/v1/completions", content=rb'{"model": "fake", "prompt": "x \ud83d\ude00", "max_tokens": 2}')
    # One character, past the reader: this fake's byte tokenizer (vocabulary 128) then refuses its bytes.
    assert "token ids must be in [0, 128)" in assert_error(pair, 400, "prompt")["message"]


def test_oversized_body_is_refused_with_413(url: str):
    big = b'{"model": "fake", "prompt": "' + b"x" * (9 << 20) + b'"}'
    assert_error(httpx.post(f"{url}/v1/completions", content=big), 413)

    def chunks():  # no content-length: the cap applies while reading
        yield b'{"prompt": "'
        for _ in range(9):
            yield b"x" * (1 << 20)
        yield b'"}'

    assert_error(httpx.post(f"{url}/v1/completions", content=chunks()), 413)


def test_unknown_model_routes_and_methods(url: str):
    error = assert_error(httpx.post(f"{url}/v1/completions", json=completion(model="gpt-4")), 404, "model")
    assert error["code"] == "model_not_found"
    assert_error(httpx.get(f"{url}/v1/nothing"), 404)
    assert_error(httpx.get(f"{url}/v1/completions"), 405)


def test_session_control_errors(url: str):
    sessions = f"{url}/v1/engine/sessions"
    assert_error(httpx.post(f"{sessions}/nobody/pin", json={"ttl_s": 10}), 404)
    assert_error(httpx.get(f"{sessions}/nobody"), 404)
    assert_error(httpx.post(f"{sessions}/nobody/pin", json={"ttl_s": -1}), 400, "ttl_s")
    assert_error(httpx.post(f"{sessions}/nobody/pin", json={}), 400, "ttl_s")
    assert_error(httpx.post(f"{sessions}/nobody/pin", json={"ttl_s": "long"}), 400, "ttl_s")
    assert_error(httpx.post(f"{sessions}/nobody/pin", json={"ttl_s": 86_401}), 400, "ttl_s")
    assert_error(httpx.post(f"{sessions}/nobody/extend", json={"ttl_s": 1e308}), 400, "ttl_s")
    assert_error(httpx.post(f"{sessions}/nobody/extend", json={"ttl_s": 1, "x": 2}), 400, "x")
    assert_error(httpx.post(f"{sessions}/nobody/extend", json={"ttl_s": 1}), 404)


def test_openai_sdk_surfaces_errors(url: str):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", n=65)
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def wait_idle(url: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/v1/engine/stats").json()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0:
            return stats
        time.sleep(0.02)
    raise AssertionError(f"the engine still has requests: {stats}")


def test_client_disconnect_mid_stream_aborts_the_request(url: str):
    before = wait_idle(url)["generation_tokens"]
    body = completion(max_tokens=200, stream=True)
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(f"{url}/v1/engine/stats").json()["num_running"] == 1
    # Leaving the block closed the connection mid-stream.
    stats = wait_idle(url)
    assert stats["generation_tokens"] - before < 150  # 200 steps would take 0.6 s: it was cut short


def test_client_disconnect_during_a_whole_response_aborts_the_request(url: str):
    before = wait_idle(url)["generation_tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=completion(max_tokens=200), timeout=0.1)
    stats = wait_idle(url)
    assert stats["generation_tokens"] - before < 150


def test_async_sdk_stream_cancelled_mid_way_aborts(url: str):
    async def main():
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                          max_tokens=200, stream=True)
            async for _ in stream:
                break
            await stream.close()

    before = wait_idle(url)["generation_tokens"]
    asyncio.run(main())
    assert wait_idle(url)["generation_tokens"] - before < 150


def test_crashed_engine_answers_503_and_fails_in_flight_requests():
    engine = fake_engine(SlowRunner(step_s=0.003, crash_at=20))
    with serve_in_thread(create_app(engine, MODEL)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        # In flight when the step loop dies: the stream ends with an error event and no clean [DONE].
        with httpx.stream("POST", f"{url}/v1/completions", json=completion(max_tokens=100, stream=True)) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line]
        assert '"engine_unavailable"' in events[-1] and "data: [DONE]" not in events
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert info.value.status_code == 503
        assert_error(httpx.get(f"{url}/healthz"), 503)
        assert_error(httpx.get(f"{url}/v1/engine/stats"), 503)
        assert_error(httpx.post(f"{url}/v1/engine/sessions/s/pin", json={"ttl_s": 1}), 503)
        metrics = httpx.get(f"{url}/metrics")
        assert metrics.status_code == 200 and "pitstop_engine_healthy 0.0" in metrics.text


def test_crash_during_a_whole_response_is_a_503():
    engine = fake_engine(SlowRunner(step_s=0.001, crash_at=5))
    with serve_in_thread(create_app(engine, MODEL)) as url:
        error = assert_error(httpx.post(f"{url}/v1/completions", json=completion(max_tokens=50)), 503)
        assert "device lost" in error["message"] and error["code"] == "engine_unavailable"


def test_shutdown_ends_the_server_and_its_engine():
    engine = fake_engine(SlowRunner())
    with serve_in_thread(create_app(engine, MODEL)) as url:
        assert httpx.post(f"{url}/v1/completions", json=completion()).status_code == 200
    assert not engine.is_healthy
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1):
        pass


def test_leaving_a_stream_of_several_choices_aborts_them_all(url: str):
    before = wait_idle(url)["generation_tokens"]
    body = completion(max_tokens=200, stream=True, n=4)
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert httpx.get(f"{url}/v1/engine/stats").json()["num_running"] == 4
    stats = wait_idle(url)
    assert stats["generation_tokens"] - before < 4 * 150  # all four were cut short
