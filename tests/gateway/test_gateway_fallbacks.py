"""Fallback models over real sockets with the openai SDK: a model whose deployments all fail is answered by
the next of its chain (whole and streamed, before the first byte), a prompt past a model's context by a
longer one (vLLM's message, and the engine's `context_length_exceeded` code), a route group's pick by the
group's next best; a client's own error never falls through; an exhausted chain returns the first error;
the row, the headers and /metrics say what happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engine.tiny_model import make_tiny_model
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    tmp = tmp_path_factory.mktemp("fallbacks")
    tiny = make_tiny_model(tmp / "tiny")
    models = [model_entry("main", a.api_base), model_entry("spare", b.api_base), model_entry("last", b.api_base),
              model_entry("cheap", a.api_base, tier="weak", price_out=1e-7),
              model_entry("dear", b.api_base, tier="strong", price_out=1e-5),
              {"model_name": "small-engine", "litellm_params": {"model": "pitstop-local/small-engine",
                                                                "model_dir": str(tiny), "num_blocks": 8,
                                                                "max_model_len": 40}}]
    groups = [{"name": "auto", "models": ["cheap", "dear"], "router": "tier-prior", "cost_preference": 1.0}]
    fallbacks = {"on_error": [{"main": ["spare", "last"]}],  # litellm's list-of-mappings shape
                 "on_context_window": {"main": ["last"], "small-engine": ["spare"]}}
    server = {"allowed_fails": 1000, "num_retries": 1}  # no cooldowns carried between tests
    with running_gateway(gateway_config(tmp, models, groups, server=server, fallbacks=fallbacks)) as gateway:
        yield gateway


def _chat(gateway: Gateway, model: str, text: str, **extra: object) -> httpx.Response:
    with gateway.http() as client:
        return client.post("/v1/chat/completions",
                           json={"model": model, "messages": [{"role": "user", "content": text}], **extra})


def test_a_failing_model_is_answered_by_the_next_of_its_chain(gw: Gateway, upstreams: tuple) -> None:
    response = _chat(gw, "main", "hello [fail:503@a]")
    assert response.status_code == 200, response.text
    assert response.headers["x-pitstop-model"] == "spare" and response.headers["x-pitstop-fallback-from"] == "main"
    assert response.json()["choices"][0]["message"]["content"].startswith("from-b")
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["model"] == "spare" and row["status"] == "ok"
    trace = row["extra"]["fallback"]
    assert (trace["from"], trace["reason"]) == ("main", "error")
    assert [(f["model"], f["status"]) for f in trace["failed"]] == [("main", 503)]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'pitstop_fallbacks_total{from_model="main",reason="error",to_model="spare"}' in metrics


def test_the_chain_goes_on_past_a_failing_fallback_and_an_exhausted_one_returns_the_first_error(
        gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    b.set_fail(500)  # spare and last both live on b
    response = _chat(gw, "main", "hello [fail:429@a]")
    assert response.status_code == 429, response.text
    assert response.json()["error"]["message"] == "injected 429 from a" and "x-pitstop-fallback-from" not in response.headers
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert [f["model"] for f in row["extra"]["fallback"]["failed"]] == ["main", "spare", "last"]
    b.set_fail(None)


def test_a_stream_falls_back_before_its_first_chunk(gw: Gateway, upstreams: tuple) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused")
    with client.chat.completions.with_streaming_response.create(
            model="main", messages=[{"role": "user", "content": "stream [fail:500@a]"}], stream=True) as raw:
        assert raw.headers["x-pitstop-model"] == "spare" and raw.headers["x-pitstop-fallback-from"] == "main"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text.startswith("from-b")


def test_a_client_error_is_not_a_reason_to_fall_back(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    response = _chat(gw, "main", "hello [fail:400@a]")
    assert response.status_code == 400 and "x-pitstop-fallback-from" not in response.headers
    assert b.stats()["requests"] == 0


def test_a_prompt_past_the_context_goes_to_a_longer_model(gw: Gateway, upstreams: tuple) -> None:
    """vLLM words it ("This model's maximum context length is ..."); Pitstop's engine gives the code."""
    long_text = "word " * 30 + "[context:10@a]"
    response = _chat(gw, "main", long_text)
    assert response.status_code == 200, response.text
    assert response.headers["x-pitstop-model"] == "last"  # on_context_window's chain, not on_error's
    trace = gw.row(response.headers["x-pitstop-request-id"])["extra"]["fallback"]
    assert trace["reason"] == "context_window" and trace["failed"][0]["status"] == 400
    engine = _chat(gw, "small-engine", "many words " * 40, max_tokens=4)
    assert engine.status_code == 200, engine.text
    assert engine.headers["x-pitstop-model"] == "spare"
    failed = gw.row(engine.headers["x-pitstop-request-id"])["extra"]["fallback"]["failed"]
    assert failed[0]["code"] == "context_length_exceeded"


def test_a_route_groups_pick_falls_to_the_groups_next_best(gw: Gateway, upstreams: tuple) -> None:
    response = _chat(gw, "auto", "route me [fail:502@a]")  # the tier prior picks cheap (on a); dear is on b
    assert response.status_code == 200, response.text
    assert response.headers["x-pitstop-model"] == "dear" and response.headers["x-pitstop-route-group"] == "auto"
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["extra"]["fallback"]["from"] == "cheap" and row["model"] == "dear"


def test_fallback_chains_name_chat_models(tmp_path: Path) -> None:
    from gateway.config import ConfigError, parse_settings

    models = [model_entry("main", "http://x/v1"), model_entry("vec", "http://x/v1")]
    models[1]["model_info"]["mode"] = "embedding"
    for chains in ({"on_error": {"main": ["nope"]}}, {"on_context_window": {"main": ["vec"]}},
                   {"on_error": {"ghost": ["main"]}}):
        with pytest.raises(ConfigError, match="fallbacks: '(nope|vec|ghost)' is not a chat model_name"):
            parse_settings(gateway_config(tmp_path, models, fallbacks=chains), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_models"):
        parse_settings(gateway_config(tmp_path, models, fallbacks={"max_models": 0}), base_dir=tmp_path)


def test_a_model_left_out_for_want_of_a_key_leaves_the_chains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import parse_settings

    monkeypatch.delenv("PITSTOP_TEST_MISSING_KEY", raising=False)
    keyed = model_entry("keyed", "http://x/v1", api_key="os.environ/PITSTOP_TEST_MISSING_KEY")
    models = [model_entry("main", "http://x/v1"), model_entry("spare", "http://x/v1"), keyed]
    settings = parse_settings(gateway_config(tmp_path, models, fallbacks={"on_error": {"main": ["keyed", "spare"]}}),
                              base_dir=tmp_path)
    assert settings.fallbacks.on_error == {"main": ["spare"]}


def test_a_model_cooling_down_is_skipped_while_a_fallback_can_answer(
        upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    """An outage costs one failed call a cooldown, not one a request; a cooling model that is the
    chain's last is still asked."""
    a, b = upstreams
    models = [model_entry("main", a.api_base), model_entry("spare", b.api_base)]
    raw = gateway_config(tmp_path, models, server={"allowed_fails": 1, "cooldown_s": 60, "num_retries": 0},
                         fallbacks={"on_error": {"main": ["spare"], "spare": ["main"]}})
    with running_gateway(raw) as gateway:
        first = _chat(gateway, "main", "one [fail:503@a]")
        second = _chat(gateway, "main", "two")
        assert (first.headers["x-pitstop-model"], second.headers["x-pitstop-model"]) == ("spare", "spare")
        assert a.stats()["requests"] == 1  # only the first request reached the failing upstream
        failed = gateway.row(second.headers["x-pitstop-request-id"])["extra"]["fallback"]["failed"]
        assert [(f["model"], f["code"]) for f in failed] == [("main", "cooling_down")]
        b.set_fail(500)
        third = _chat(gateway, "spare", "three")  # spare fails now; main, cooling, is its chain's last
        assert third.status_code == 200 and third.headers["x-pitstop-model"] == "main"
        b.set_fail(None)


def test_a_verifying_groups_pick_falls_back_and_the_fallback_is_verified(
        upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    a, b = upstreams
    models = [model_entry("weak", a.api_base, tier="weak", price_out=1e-7),
              model_entry("mid", b.api_base, tier="weak", price_out=2e-7),
              model_entry("judge", b.api_base, tier="weak", price_out=3e-7),
              model_entry("strong", b.api_base, tier="strong", price_out=1e-5)]
    group = {"name": "checked", "models": ["weak", "mid", "strong"], "router": "tier-prior", "cost_preference": 1.0,
             "verify": {"verifiers": ["judge"], "escalate_to": "strong"}}
    with running_gateway(gateway_config(tmp_path, models, [group])) as gateway:
        whole = _chat(gateway, "checked", "Which? [fail:503@a] [answer:B]")
        streamed = _chat(gateway, "checked", "Which? [fail:503@a] [answer:B]", stream=True)
        assert (whole.status_code, streamed.status_code) == (200, 200), whole.text
        for response in (whole, streamed):
            assert response.headers["x-pitstop-model"] == "mid" and response.headers["x-pitstop-fallback-from"] == "weak"
            assert response.headers["x-pitstop-verify"] == "accepted"  # mid's "B", checked by the judge's "B"
        extra = gateway.row(whole.headers["x-pitstop-request-id"])["extra"]
        assert extra["fallback"]["from"] == "weak" and extra["verify"]["pick"] == "mid"
