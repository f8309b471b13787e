"""Errors in OpenAI's shape (never a 5xx for a bad request), retries on another deployment before the
first byte, cooldown of a deployment that keeps failing, and a stream that breaks after it started."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

MAX_BODY = 4096


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [model_entry("up-direct", a.api_base), model_entry("up-litellm", a.api_base, provider="hosted_vllm"),
              model_entry("pair", a.api_base), model_entry("pair", b.api_base),
              model_entry("lpair", a.api_base, provider="hosted_vllm"),
              model_entry("lpair", b.api_base, provider="hosted_vllm")]
    # Failures here must not cool a deployment down: the cooldown test has its own gateway.
    server = {"max_body_bytes": MAX_BODY, "allowed_fails": 1000, "num_retries": 2}
    raw = gateway_config(tmp_path_factory.mktemp("errors"), models, server=server)
    with running_gateway(raw) as gateway:
        yield gateway


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    if param is not None:
        assert error["param"] == param
    if response.request.method == "POST" and response.request.url.path in ("/v1/chat/completions", "/v1/completions"):
        assert response.headers["x-pitstop-request-id"].startswith("req-")
    return error


def chat(text: str = "hi", **extra: object) -> dict:
    return {"model": "up-direct", "messages": [{"role": "user", "content": text}], **extra}


def with_tool_calls(calls: object) -> dict:
    """An agent's history whose assistant turn carries `calls`."""
    return {"model": "up-direct", "messages": [
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}


BAD_CHAT_BODIES = [
    pytest.param(chat(temperature="hot"), "temperature", id="temperature-type"),
    pytest.param(chat(temperature=3), "temperature", id="temperature-range"),
    pytest.param(chat(top_p=0), "top_p", id="top_p-zero"),
    pytest.param(chat(max_tokens=0), "max_tokens", id="max_tokens-zero"),
    pytest.param(chat(max_tokens="5"), "max_tokens", id="max_tokens-type"),
    pytest.param(chat(n=True), "n", id="n-bool"),
    pytest.param(chat(stream="yes"), "stream", id="stream-type"),
    pytest.param(chat(stop=[1]), "stop", id="stop-type"),
    pytest.param(chat(tools={"name": "x"}), "tools", id="tools-type"),
    pytest.param(chat(stream_options={"include_usage": True}), "stream_options", id="stream_options-no-stream"),
    pytest.param(chat(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage",
                 id="include_usage-type"),
    pytest.param(chat(presence_penalty=5), "presence_penalty", id="penalty-range"),
    pytest.param(chat(priority=1e10), "priority", id="priority-range"),
    pytest.param({"model": "up-direct"}, "messages", id="messages-missing"),
    pytest.param({"model": "up-direct", "messages": []}, "messages", id="messages-empty"),
    pytest.param({"model": "up-direct", "messages": "hi"}, "messages", id="messages-string"),
    pytest.param({"model": "up-direct", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role",
                 id="role-unknown"),
    pytest.param({"model": "up-direct", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
                 id="content-type"),
    pytest.param({"model": "up-direct", "messages": ["hi"]}, "messages[0]", id="message-not-object"),
    pytest.param({"messages": [{"role": "user", "content": "x"}]}, "model", id="model-missing"),
    pytest.param(chat(model=5), "model", id="model-type"),
    pytest.param(chat(session_id=""), "session_id", id="session-empty"),
    pytest.param(with_tool_calls("call"), "messages[1].tool_calls", id="tool_calls-type"),
    pytest.param(with_tool_calls([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]),
                 "messages[1].tool_calls[0].function.arguments", id="tool_call-arguments-object"),
    pytest.param(with_tool_calls([{"id": "c1", "function": {"arguments": "{}"}}]),
                 "messages[1].tool_calls[0].function.name", id="tool_call-no-name"),
    pytest.param(with_tool_calls([{"id": 1, "function": {"name": "f", "arguments": "{}"}}]),
                 "messages[1].tool_calls[0].id", id="tool_call-id-type"),
    pytest.param({"model": "up-direct", "messages": [{"role": "user", "content": "x", "name": 5}]}, "messages[0].name",
                 id="name-type"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT_BODIES)
def test_bad_chat_parameters_are_400(gw: Gateway, body: dict, param: str) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400, param)
    assert error["type"] == "invalid_request_error"
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert (row["status"], row["http_status"]) == ("error", 400)


@pytest.mark.parametrize("body", [{"model": "up-direct"}, {"model": "up-direct", "prompt": {"x": 1}},
                                  {"model": "up-direct", "prompt": [1.5]}, {"model": "up-direct", "prompt": None}])
def test_bad_completion_prompts_are_400(gw: Gateway, body: dict) -> None:
    with gw.http() as http:
        response = http.post("/v1/completions", json=body)
    assert_openai_error(response, 400, "prompt")


@pytest.mark.parametrize("content", [b'{"model": "up-direct", "messages": [', b"", b"\xff\xfe", b"NaN",
                                     b'{"model": "up-direct", "temperature": NaN}', b"[" * 100_000 + b"]" * 100_000])
def test_malformed_json_is_400(gw: Gateway, content: bytes) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", content=content[:MAX_BODY],
                             headers={"content-type": "application/json"})
    assert_openai_error(response, 400)
    assert response.headers["x-pitstop-request-id"].startswith("req-")


@pytest.mark.parametrize(("content", "param"), [
    (rb'{"model": "up-direct", "messages": [{"role": "user", "content": "a\ud800b"}]}', "messages[0].content"),
    (rb'{"model": "up-direct", "messages": [{"role": "user", "content": "\ude00"}], "user": "u"}', "messages[0].content"),
    (rb'{"model": "up-direct", "messages": [{"role": "user", "content": "x"}], "user": "\udbff"}', "user"),
    (rb'{"model": "up-direct", "prompt": ["\ud83d"]}', "prompt[0]"),
])
def test_a_lone_surrogate_escape_is_400_naming_the_field(gw: Gateway, content: bytes, param: str) -> None:
    """JSON can escape half a UTF-16 pair; no UTF-8 encoder downstream (features, tokenizer, database,
    upstream) takes it, so it is refused where the body is read, not as a 500 later."""
    path = "/v1/completions" if b'"prompt"' in content else "/v1/chat/completions"
    with gw.http() as http:
        response = http.post(path, content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, param)
    assert error["code"] == "invalid_json" and "surrogate" in error["message"]
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert (row["status"], row["http_status"]) == ("error", 400)


@pytest.mark.parametrize("field", ["temperature", "priority", "max_tokens", "seed", "cost_preference"])
def test_an_integer_past_64_bits_is_400_not_an_overflow(gw: Gateway, field: str) -> None:
    """Python reads any integer; every float conversion after would overflow (a 500 before)."""
    for value in (2 ** 64, -(10 ** 400)):
        with gw.http() as http:
            response = http.post("/v1/chat/completions", content=json.dumps(chat(**{field: value})),
                                 headers={"content-type": "application/json"})
        error = assert_openai_error(response, 400)
        assert error["code"] == "invalid_json" and "out of range" in error["message"]
    with gw.http() as http:  # a long number inside a string is text
        response = http.post("/v1/chat/completions", json=chat("9" * 40, seed=2 ** 63))
    assert response.status_code == 200, response.text


def test_a_surrogate_pair_is_one_character_and_is_served(gw: Gateway) -> None:
    content = rb'{"model": "up-direct", "messages": [{"role": "user", "content": "smile \ud83d\ude00"}]}'
    with gw.http() as http:
        response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", [[], None, "text", 5])
def test_body_must_be_an_object(gw: Gateway, body: object) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", content=json.dumps(body))
    assert_openai_error(response, 400)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_size_cap_is_413(gw: Gateway, chunked: bool) -> None:
    body = json.dumps(chat("x" * (MAX_BODY + 10))).encode()
    with gw.http() as http:
        # Chunked: no content-length to refuse up front, so the cap holds while reading.
        content = iter([body[:1000], body[1000:]]) if chunked else body
        response = http.post("/v1/chat/completions", content=content)
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large"


def test_unknown_model_is_404(gw: Gateway) -> None:
    with gw.openai() as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    response = caught.value.response
    error = assert_openai_error(response, 404, "model")
    assert error["code"] == "model_not_found" and "up-direct" in error["message"]
    assert response.headers["x-pitstop-request-id"].startswith("req-")


def test_unknown_path_and_wrong_method_keep_the_shape(gw: Gateway) -> None:
    with gw.http() as http:
        assert_openai_error(http.get("/v1/nothing"), 404)
        assert_openai_error(http.put("/v1/chat/completions"), 405)  # GET lists stored completions


@pytest.mark.parametrize("model", ["pair", "lpair"])
@pytest.mark.parametrize("fault", [500, 429])
@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_the_first_byte_retries_on_another_deployment(
        gw: Gateway, upstreams: tuple[UpstreamProcess, UpstreamProcess], model: str, fault: int,
        stream: bool) -> None:
    a, b = upstreams
    with gw.openai() as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"hi [fail:{fault}@a]"}], stream=stream)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            text = raw.parse().choices[0].message.content
    assert text.startswith("from-b")
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 1)
    assert raw.headers["x-pitstop-model"] == model
    row = gw.row(raw.headers["x-pitstop-request-id"])
    assert (row["status"], row["deployment"]) == ("ok", f"{model}#1")
    with gw.http() as http:
        assert f'pitstop_retries_total{{model="{model}"}}' in http.get("/metrics").text


@pytest.mark.parametrize("model", ["pair", "lpair"])
@pytest.mark.parametrize("stream", [False, True])
def test_every_deployment_failing_answers_the_error(gw: Gateway, upstreams: tuple, model: str, stream: bool) -> None:
    a, b = upstreams
    with gw.http() as http:  # nothing was streamed yet: a plain JSON error, not an event
        response = http.post("/v1/chat/completions", json=chat("x [fail:500]", model=model, stream=stream))
    assert_openai_error(response, 500)
    assert response.headers["x-pitstop-model"] == model
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 1)
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert (row["status"], row["http_status"], row["model"]) == ("error", 500, model)


@pytest.mark.parametrize("model", ["pair", "lpair"])
def test_an_upstream_400_is_the_clients_error_and_not_retried(gw: Gateway, upstreams: tuple, model: str) -> None:
    a, b = upstreams
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=chat("x [fail:400@a]", model=model))
    assert_openai_error(response, 400)
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 0)


@pytest.mark.parametrize("model", ["up-direct", "up-litellm"])
def test_stream_broken_after_it_started_ends_with_an_error_event(gw: Gateway, upstreams: tuple,
                                                                model: str) -> None:
    with gw.http() as http:
        response = http.post("/v1/chat/completions", json=chat("x [break:2] [words:6]", model=model, stream=True))
    assert response.status_code == 200  # the status line went out with the first chunk
    events = [e[len("data: "):] for e in response.text.split("\n\n") if e.startswith("data: ")]
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-1]] == ["from-a", " w1"]
    error = chunks[-1]["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
    row = gw.row(response.headers["x-pitstop-request-id"])
    # 502 from the direct backend; litellm reports a dropped connection as a 500.
    assert (row["status"], row["stream"]) == ("error", True) and row["http_status"] in (500, 502)
    assert "stream broke" in row["error"] and row["completion"] == "from-a w1"


def test_sdk_raises_on_a_broken_stream(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="up-direct", stream=True,
                                                messages=[{"role": "user", "content": "[break:1]"}]):
            pass


def test_a_failing_deployment_cools_down(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                         tmp_path: Path) -> None:
    a, b = upstreams
    models = [model_entry("pair", a.api_base), model_entry("pair", b.api_base)]
    cooldown_s = 1.5
    raw = gateway_config(tmp_path, models, server={"allowed_fails": 2, "cooldown_s": cooldown_s})
    a.set_fail(500)
    with running_gateway(raw) as gateway, gateway.openai() as client:
        def served_by() -> str:
            return client.chat.completions.create(model="pair", messages=[{"role": "user", "content": "x"}]) \
                .choices[0].message.content.split()[0]

        assert [served_by(), served_by()] == ["from-b", "from-b"]  # a failed twice: now cooling
        cooled_at = time.monotonic()
        assert a.stats()["requests"] == 2
        assert {served_by() for _ in range(5)} == {"from-b"}
        assert a.stats()["requests"] == 2, "a cooling deployment was picked"
        a.set_fail(None)
        time.sleep(max(0.0, cooled_at + cooldown_s + 0.1 - time.monotonic()))
        assert served_by() == "from-a"  # back after the cooldown


def test_no_request_is_left_outstanding(gw: Gateway) -> None:
    """After every request above (failed, retried, broken), each deployment's in-flight count is back to 0."""
    assert {d.name: d.outstanding for d in gw.state.pool.deployments} == \
        {d.name: 0 for d in gw.state.pool.deployments}


@pytest.mark.parametrize("provider", ["pitstop-engine", "hosted_vllm"])
def test_a_slow_deployment_times_out_and_the_request_retries(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                                             tmp_path: Path, provider: str) -> None:
    a, b = upstreams
    models = [model_entry("pair", a.api_base, provider=provider), model_entry("pair", b.api_base, provider=provider)]
    raw = gateway_config(tmp_path, models, server={"request_timeout_s": 0.3})
    with running_gateway(raw) as gateway, gateway.openai() as client:
        client.chat.completions.create(model="pair", messages=[{"role": "user", "content": "warm up"}])
        raw = client.chat.completions.with_raw_response.create(
            model="pair", messages=[{"role": "user", "content": "[delay:20@a]"}])
        assert raw.parse().choices[0].message.content.startswith("from-b")
        # a answers after 20 s; anything well short of that means it was abandoned at the 0.3 s timeout
        assert gateway.row(raw.headers["x-pitstop-request-id"])["latency_s"] < 10
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="pair", messages=[{"role": "user", "content": "[delay:1.5]"}])
    assert caught.value.status_code == 504  # the deployment timed out, not the client (not a 408)
    assert caught.value.body["type"] == "server_error"
    assert caught.value.response.headers["x-pitstop-model"] == "pair"
