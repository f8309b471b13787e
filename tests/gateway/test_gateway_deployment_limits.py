"""Per-deployment rpm / tpm over real sockets, with the fake upstreams `a` and `b` behind one model: requests
go to the deployment with headroom (counted by which instance answered and by the upstreams' own request
counts); with none left the gateway answers OpenAI's 429 with a Retry-After and calls no upstream; that
429 falls to a fallback model; a session's home deployment at its limit is left; /metrics and the row
say what happened. Each model has its own windows (60 s), so each test uses its own models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess


def limited(name: str, api_base: str, **limits: int) -> dict:
    return model_entry(name, api_base, **limits)


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    models = [
        limited("steer", a.api_base, rpm=2), limited("steer", b.api_base, rpm=100),
        limited("tokens", a.api_base, tpm=300), limited("tokens", b.api_base, tpm=100000),
        limited("corrected", a.api_base, tpm=300), limited("corrected", b.api_base, tpm=100000),
        limited("streamed", a.api_base, tpm=300), limited("streamed", b.api_base, tpm=100000),
        limited("tight", a.api_base, rpm=1), limited("tight", b.api_base, rpm=1),
        limited("capped", a.api_base, rpm=1), model_entry("spare", b.api_base),
        limited("home", a.api_base, rpm=2), limited("home", b.api_base, rpm=100),
    ]
    server = {"allowed_fails": 1000, "num_retries": 1}
    fallbacks = {"on_error": {"capped": ["spare"]}}
    sessions = {"enabled": True}
    tmp = tmp_path_factory.mktemp("deployment-limits")
    with running_gateway(gateway_config(tmp, models, server=server, fallbacks=fallbacks,
                                        sessions=sessions)) as gateway:
        yield gateway


def chat(gateway: Gateway, model: str, text: str, headers: dict[str, str] | None = None,
         **body: Any) -> httpx.Response:
    with gateway.http() as client:
        return client.post("/v1/chat/completions", headers=headers or {},
                           json={"model": model, "messages": body.pop("messages", None)
                                 or [{"role": "user", "content": text}], **body})


def instance(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"].split()[0]


def test_rpm_steers_requests_to_the_deployment_with_headroom(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    responses = [chat(gw, "steer", f"question {i}") for i in range(6)]
    # One at a time, least outstanding is a tie every time: without limits `a`, the first, takes them all.
    assert [instance(r) for r in responses] == ["from-a"] * 2 + ["from-b"] * 4
    assert (a.stats()["requests"], b.stats()["requests"]) == (2, 4)
    row = gw.row(responses[2].headers["x-pitstop-request-id"])
    assert row["deployment"] == "steer#1"
    assert row["extra"]["deployment_limits"] == {"steer": {"skipped": {"steer#0": "rpm"}}}
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'pitstop_deployment_rate_limited_total{deployment="steer#0",limit="rpm"} 4.0' in metrics
    assert 'pitstop_deployment_window_usage{deployment="steer#0",limit="rpm"} 2.0' in metrics
    assert 'pitstop_deployment_window_usage{deployment="steer#1",limit="rpm"} 4.0' in metrics


def test_tpm_steers_a_big_prompt_away_from_a_deployment_it_would_take_past_its_quota(
        gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    big = " ".join(["word"] * 160)  # 800 characters: an estimate of 201 tokens; 165 used (words) with the answer
    first, second, small = chat(gw, "tokens", big), chat(gw, "tokens", big), chat(gw, "tokens", "hi")
    assert [instance(r) for r in (first, second, small)] == ["from-a", "from-b", "from-a"]  # 165 + 201 > 300
    assert gw.row(second.headers["x-pitstop-request-id"])["extra"]["deployment_limits"] == {
        "tokens": {"skipped": {"tokens#0": "tpm"}}}
    assert (a.stats()["requests"], b.stats()["requests"]) == (2, 1)


def test_a_requests_tokens_are_corrected_to_its_usage_when_it_ends(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    one_long_word = "x" * 800  # estimated 201 tokens, but the upstream counts 1 + 5 answer words
    answered = [instance(chat(gw, "corrected", one_long_word)) for _ in range(3)]
    assert answered == ["from-a"] * 3  # had the estimates stayed, the second (201 + 201 > 300) would go to b
    assert b.stats()["requests"] == 0
    metrics = httpx.get(f"{gw.url}/metrics").text  # each counts 1 prompt word + 5 answer words, as the usage said
    assert 'pitstop_deployment_window_usage{deployment="corrected#0",limit="tpm"} 18.0' in metrics


def test_a_streamed_answers_final_usage_chunk_corrects_its_tokens(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    one_long_word = "x" * 800  # estimated 201 tokens, but the upstream's last chunk counts 1 + 5 answer words
    client = gw.openai()
    for _ in range(3):  # the client asks for no usage: the gateway asks the upstream for it all the same
        stream = client.chat.completions.create(model="streamed", stream=True,
                                                messages=[{"role": "user", "content": one_long_word}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("from-a")
    assert b.stats()["requests"] == 0  # had the estimates stayed, the second (201 + 201 > 300) would go to b
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'pitstop_deployment_window_usage{deployment="streamed#0",limit="tpm"} 18.0' in metrics


def test_with_every_deployment_at_its_limit_the_gateway_answers_429_and_calls_no_upstream(
        gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    assert sorted(instance(chat(gw, "tight", f"q{i}")) for i in range(2)) == ["from-a", "from-b"]
    client = gw.openai()
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="tight", messages=[{"role": "user", "content": "one more"}])
    response = refused.value.response
    assert 1 <= int(response.headers["retry-after"]) <= 60
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "deployment_rate_limited")
    assert "tight#0 rpm" in error["message"] and "tight#1 rpm" in error["message"]
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 1)  # the refusal reached neither
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert (row["http_status"], row["extra"]["code"]) == (429, "deployment_rate_limited")
    refusal = row["extra"]["deployment_limits"]["tight"]
    assert refusal["refused"] == {"tight#0": "rpm", "tight#1": "rpm"} and 0 < refusal["retry_after_s"] <= 60


def test_the_429_falls_to_the_fallback_model(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    first, second = chat(gw, "capped", "first"), chat(gw, "capped", "second")
    assert [instance(r) for r in (first, second)] == ["from-a", "from-b"]
    assert second.headers["x-pitstop-model"] == "spare" and second.headers["x-pitstop-fallback-from"] == "capped"
    row = gw.row(second.headers["x-pitstop-request-id"])
    assert row["extra"]["fallback"]["failed"][0]["code"] == "deployment_rate_limited"
    assert row["extra"]["deployment_limits"]["capped"]["refused"] == {"capped#0": "rpm"}
    assert a.stats()["requests"] == 1


def test_a_sessions_home_deployment_at_its_limit_is_left(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    session = {"x-session-id": "limited-agent"}
    messages: list[dict] = []
    served = []
    for turn in range(3):
        messages.append({"role": "user", "content": f"step {turn}"})
        response = chat(gw, "home", "", headers=session, messages=list(messages))
        served.append(instance(response))
        messages.append({"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]})
    assert served == ["from-a", "from-a", "from-b"]  # its home kept while it has headroom, then left
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["moved_instance"] and row["deployment"] == "home#1"
