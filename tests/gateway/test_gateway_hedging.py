"""Hedged requests over real sockets (`hedging:`, gateway/hedging.py): a model with two deployments, one
slow to answer; the request is sent to the other too after the delay, the other's answer comes back (its
first word names the instance), the slow call is cancelled (its upstream sees the connection close, the
gateway's counts of requests in flight go back to 0), and the row, the headers and /metrics say so.
No hedge before the delay, for a model with one deployment, for an agent session's preferred deployment,
or past the budget; the adaptive delay waits for its samples; both calls failing is the usual error; each
call has its attempt span."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engine.otlp import CLIENT, SERVER, collector, traceparent
from tests.engine.serving import serve_in_thread
from tests.gateway.harness import (
    PRICE_IN,
    PRICE_OUT,
    Gateway,
    gateway_config,
    model_entry,
    running_gateway,
    wait_until,
)
from tests.gateway.upstream import UpstreamProcess

DELAY_S = 0.5  # the module gateway's fixed hedging delay
SLOW_S = 5  # a slow deployment's wait: far past the delay, and past what a cancelled call may be held


class NeverAnswers:
    """An upstream (raw ASGI) that takes a chat request and never answers it, counting the requests whose
    connection the gateway closed."""

    def __init__(self) -> None:
        self.requests = 0
        self.disconnects = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"].endswith("/models"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"object":"list","data":[]}'})
            return
        while (message := await receive()).get("more_body"):
            pass
        self.requests += 1
        while message["type"] != "http.disconnect":
            message = await receive()
        self.disconnects += 1


@pytest.fixture(scope="module")
def never_answers() -> Iterator[tuple[NeverAnswers, str]]:
    app = NeverAnswers()
    with serve_in_thread(app) as url:  # type: ignore[arg-type]
        yield app, url


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess], never_answers: tuple[NeverAnswers, str],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, b = upstream_processes
    tmp = tmp_path_factory.mktemp("hedging")
    models = [model_entry("m", a.api_base), model_entry("m", b.api_base), model_entry("solo", a.api_base),
              model_entry("hangs", never_answers[1] + "/v1"), model_entry("hangs", a.api_base)]
    server = {"allowed_fails": 1000, "num_retries": 1}  # no cooldowns carried between tests
    # Every request may hedge here (the budget has a test of its own).
    hedging = {"enabled": True, "delay_s": DELAY_S, "max_extra_share": 1.0}
    with running_gateway(gateway_config(tmp, models, server=server, hedging=hedging)) as gateway:
        chat(gateway, "m", "warm up")  # connections and lazy paths: the first request is not slow by accident
        yield gateway


def chat(gateway: Gateway, model: str, text: str, headers: dict | None = None,
         messages: list[dict] | None = None, **extra: Any) -> httpx.Response:
    with gateway.http() as client:
        return client.post("/v1/chat/completions", headers=headers or {}, json={
            "model": model, "messages": messages or [{"role": "user", "content": text}], **extra})


def answer_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def hedges(gateway: Gateway, outcome: str, model: str = "m") -> float:
    found = re.search(rf'^pitstop_hedges_total\{{model="{model}",outcome="{outcome}"\}} ([0-9.]+)$',
                      httpx.get(f"{gateway.url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def in_flight(gateway: Gateway) -> dict[str, int]:
    assert gateway.state is not None
    return {d.name: d.outstanding for d in gateway.state.pool.deployments if d.outstanding}


def test_a_slow_deployment_is_hedged_and_the_fast_one_answers(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    won_before = hedges(gw, "won")
    text = f"hello [delay:{SLOW_S}@a]"
    response = chat(gw, "m", text)
    assert answer_of(response).startswith("from-b")
    assert response.headers["x-pitstop-hedged"] == "m#1"
    assert in_flight(gw) == {}  # a's call was cancelled before the answer went out, its slot released
    assert a.stats()["requests"] == 1 and b.stats()["requests"] == 1
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["status"] == "ok" and row["deployment"] == "m#1"
    # a's cancelled call is billed its prompt (the gateway's estimate: characters / 4 + 1) at a's price
    cancelled_cost = (len(text) // 4 + 1) * PRICE_IN
    assert row["extra"]["hedge"] == {"delay_s": DELAY_S, "asked": ["m#0", "m#1"], "hedges": 1, "won": "m#1",
                                     "cancelled": ["m#0"], "failed": [],
                                     "cancelled_cost_usd": pytest.approx(cancelled_cost)}
    answered_cost = row["prompt_tokens"] * PRICE_IN + row["completion_tokens"] * PRICE_OUT
    assert row["cost_usd"] == pytest.approx(answered_cost + cancelled_cost)
    assert hedges(gw, "won") == won_before + 1


def test_a_stream_is_hedged_before_its_first_chunk(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, client.chat.completions.with_streaming_response.create(
            model="m", messages=[{"role": "user", "content": f"stream [delay:{SLOW_S}@a]"}], stream=True) as raw:
        assert raw.headers["x-pitstop-hedged"] == "m#1"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
        request_id = raw.headers["x-pitstop-request-id"]
    assert text.startswith("from-b")
    wait_until(lambda: in_flight(gw) == {}, timeout=3, what="both streams' slots released")
    hedge = gw.row(request_id)["extra"]["hedge"]
    assert (hedge["won"], hedge["cancelled"]) == ("m#1", ["m#0"])


def test_no_hedge_before_the_delay_nor_for_a_model_with_one_deployment(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    quick = chat(gw, "m", "hello")
    assert answer_of(quick).startswith("from-a") and "x-pitstop-hedged" not in quick.headers
    slow_alone = chat(gw, "solo", "hello [delay:1]")  # past the delay, but nowhere else to go
    assert answer_of(slow_alone).startswith("from-a") and "x-pitstop-hedged" not in slow_alone.headers
    assert b.stats()["requests"] == 0
    for response in (quick, slow_alone):
        assert "hedge" not in gw.row(response.headers["x-pitstop-request-id"])["extra"]


def test_the_cancelled_call_has_its_upstream_connection_closed(gw: Gateway, upstreams: tuple,
                                                               never_answers: tuple[NeverAnswers, str]) -> None:
    hanging, _ = never_answers
    requests, disconnects = hanging.requests, hanging.disconnects
    response = chat(gw, "hangs", "hello")  # hangs#0 never answers; hangs#1 is upstream a
    assert answer_of(response).startswith("from-a") and response.headers["x-pitstop-hedged"] == "hangs#1"
    assert hanging.requests == requests + 1
    wait_until(lambda: hanging.disconnects == disconnects + 1, timeout=5, what="the upstream saw the close")


def test_a_client_leaving_mid_race_cancels_both_calls(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    cancelled_before = hedges(gw, "cancelled")
    with gw.http() as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", timeout=DELAY_S + 0.7, json={
            "model": "m", "messages": [{"role": "user", "content": f"both slow [delay:{SLOW_S}]"}]})
    assert a.stats()["requests"] == 1 and b.stats()["requests"] == 1  # the hedge went before the client left
    wait_until(lambda: in_flight(gw) == {}, timeout=SLOW_S - 2, what="both calls cancelled")
    wait_until(lambda: hedges(gw, "cancelled") == cancelled_before + 1, timeout=3, what="counted")


def test_when_both_calls_fail_the_error_is_the_usual_one(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    response = chat(gw, "m", "hello [delay:1@a] [fail:503]")  # a fails after the hedge went; b at once
    assert response.status_code == 503 and b.stats()["requests"] == 1
    unhedged = chat(gw, "solo", "hello [fail:503]")
    assert unhedged.status_code == 503
    error, usual = response.json()["error"], unhedged.json()["error"]
    assert set(error) == set(usual) and error["message"] in ("injected 503 from a", "injected 503 from b")
    assert in_flight(gw) == {}
    row = gw.row(response.headers["x-pitstop-request-id"])
    assert row["status"] != "ok" and row["extra"]["hedge"]["won"] is None
    assert sorted(row["extra"]["hedge"]["failed"]) == ["m#0", "m#1"] and row["extra"]["hedge"]["hedges"] == 1


def test_an_agent_sessions_preferred_deployment_is_not_hedged(gw: Gateway, upstreams: tuple) -> None:
    a, b = upstreams
    session = {"x-session-id": "hedging-agent"}
    first = chat(gw, "m", "plan the task", headers=session)
    assert answer_of(first).startswith("from-a")  # its home: a, where its KV would be
    messages = [{"role": "user", "content": "plan the task"}, {"role": "assistant", "content": answer_of(first)},
                {"role": "user", "content": "go on [delay:1.5@a]"}]
    second = chat(gw, "m", "", headers=session, messages=messages)
    assert answer_of(second).startswith("from-a") and "x-pitstop-hedged" not in second.headers
    assert b.stats()["requests"] == 0
    elsewhere = chat(gw, "m", "", messages=messages)  # the same request without the session: hedged
    assert answer_of(elsewhere).startswith("from-b")


def test_the_budget_bounds_the_hedges(upstreams: tuple, tmp_path: Path) -> None:
    a, b = upstreams
    models = [model_entry("m", a.api_base), model_entry("m", b.api_base)]
    hedging = {"enabled": True, "delay_s": 0.3, "max_extra_share": 0.5, "burst": 1}  # half a hedge a request
    with running_gateway(gateway_config(tmp_path, models, hedging=hedging)) as gateway:
        first = chat(gateway, "m", "one [delay:4@a]")
        refused = chat(gateway, "m", "two [delay:1.2@a]")  # half a token: no hedge, a answers late
        again = chat(gateway, "m", "three [delay:4@a]")
        assert [answer_of(r)[:6] for r in (first, refused, again)] == ["from-b", "from-a", "from-b"]
        assert "x-pitstop-hedged" not in refused.headers
        hedge = gateway.row(refused.headers["x-pitstop-request-id"])["extra"]["hedge"]
        assert (hedge["skipped"], hedge["hedges"], hedge["asked"]) == ("budget", 0, ["m#0"])
        assert (hedges(gateway, "won"), hedges(gateway, "budget")) == (2.0, 1.0)


def test_the_adaptive_delay_waits_for_its_samples_and_keeps_streams_apart(upstreams: tuple, tmp_path: Path) -> None:
    a, b = upstreams
    models = [model_entry("m", a.api_base), model_entry("m", b.api_base)]
    hedging = {"enabled": True, "min_samples": 3, "min_delay_s": 0.25}
    with running_gateway(gateway_config(tmp_path, models, hedging=hedging)) as gateway:
        assert gateway.state is not None and gateway.state.dispatcher.hedging is not None
        unsampled = chat(gateway, "m", "first [delay:1@a]")  # no samples yet: not hedged
        chat(gateway, "m", "quick")
        short = chat(gateway, "m", "third [delay:2@a]")  # two samples of the three it waits for: not hedged either
        for response in (unsampled, short):
            assert answer_of(response).startswith("from-a") and "x-pitstop-hedged" not in response.headers
        for i in range(40):
            chat(gateway, "m", f"quick {i}")
        window = gateway.state.dispatcher.hedging._windows[("m", False)]
        expected = max(0.25, window.quantile(0.95))
        assert len(window) >= 43 and expected < 1.0  # the 95th percentile leaves the two slow calls out
        hedged = chat(gateway, "m", f"slow [delay:{SLOW_S}@a]")
        assert answer_of(hedged).startswith("from-b")
        assert gateway.row(hedged.headers["x-pitstop-request-id"])["extra"]["hedge"]["delay_s"] == round(expected, 4)
        with gateway.openai() as client:  # streams have their own window, still empty: not hedged
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "stream [delay:1@a]"}], stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("from-a")


def test_each_call_of_a_hedged_request_has_its_attempt_span(upstreams: tuple, tmp_path: Path) -> None:
    a, b = upstreams
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    models = [model_entry("m", a.api_base), model_entry("m", b.api_base)]
    with collector() as (received, endpoint):
        raw = gateway_config(tmp_path, models, hedging={"enabled": True, "delay_s": 0.3},
                             tracing={"otlp_endpoint": endpoint, "service_name": "gw"})
        with running_gateway(raw) as gateway:
            response = chat(gateway, "m", f"traced [delay:{SLOW_S}@a]",
                            headers={"traceparent": traceparent(trace_id, parent_id)})
            assert answer_of(response).startswith("from-b")
        # The gateway's shutdown exported what was left.
    (server,) = [s for s in received.spans if s.trace_id == trace_id and s.kind == SERVER]
    first, hedge = sorted((s for s in received.spans if s.parent_id == server.span_id and s.kind == CLIENT),
                          key=lambda s: s.attributes["pitstop.attempt"])
    assert (first.attributes["pitstop.deployment"], first.attributes["pitstop.aborted"]) == ("m#0", True)
    assert hedge.attributes["pitstop.deployment"] == "m#1" and "pitstop.aborted" not in hedge.attributes
    assert hedge.attributes["pitstop.attempt.reason"] == "hedge after 0.300 s"
    assert first.start_ns < hedge.start_ns and first.end_ns <= server.end_ns
