"""OpenAI's Realtime API through the gateway (gateway/realtime.py), over real sockets: the openai SDK's
`client.realtime.connect` and a `websockets` client against the gateway under uvicorn, relaying to the mock
realtime upstream (tests/gateway/realtime_upstream.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest
from agents.realtime import RealtimeAgent, RealtimeRunner
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gateway.price_map import price_map
from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.forward_proxy import forward_proxy
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    gateway_processes,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.realtime_upstream import DELTAS, USAGE, RealtimeUpstream, audio_chunks, realtime_upstream
from tests.storage.pg_cluster import free_port

MASTER = "sk-master-realtime"
pytestmark = pytest.mark.timeout(120)


def realtime_entry(name: str, api_base: str, model: str = "openai/gpt-realtime", **params: object) -> dict:
    return {"model_name": name, "litellm_params": {"model": model, "api_base": api_base, **params},
            "model_info": {"mode": "realtime"}}


def config(tmp_path: Path, mock: RealtimeUpstream) -> dict:
    models = [realtime_entry("voice", mock.url + "/v1", api_key="sk-upstream"),
              realtime_entry("azvoice", mock.url, model="azure/my-voice", api_key="az-key",
                             api_version="2025-04-01-preview"),
              realtime_entry("dead-voice", f"http://127.0.0.1:{free_port()}/v1", api_key="sk-dead"),
              realtime_entry("dead-alone", f"http://127.0.0.1:{free_port()}/v1", api_key="sk-dead"),
              {"model_name": "chatty", "litellm_params": {"model": "openai/gpt-4o", "api_base": mock.url + "/v1",
                                                          "api_key": "x"}}]
    return gateway_config(tmp_path, models, auth={"require_keys": True, "master_key": MASTER},
                          fallbacks={"on_error": {"dead-voice": ["voice"]}})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RealtimeUpstream]]:
    with realtime_upstream() as mock, running_gateway(config(tmp_path_factory.mktemp("rt"), mock)) as gw:
        yield gw, mock


def new_key(gw: Gateway, **fields: object) -> dict:
    with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as http:
        return http.post("/v1/keys", json={"name": "rt", **fields}).json()


def ws_url(gw: Gateway, query: str, path: str = "/v1/realtime") -> str:
    return gw.url.replace("http://", "ws://") + f"{path}?{query}"


def events_until(ws: ClientConnection, kind: str) -> list[dict]:
    seen = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        seen.append(event)
        if event["type"] == kind:
            return seen


def response_cost() -> float:
    """USAGE priced as OpenAI bills gpt-realtime, from litellm's price map (text, audio, cached apart)."""
    p = price_map()["gpt-realtime"]
    inp, out = USAGE["input_token_details"], USAGE["output_token_details"]
    cached = inp["cached_tokens_details"]
    return ((inp["text_tokens"] - cached["text_tokens"]) * p["input_cost_per_token"]
            + cached["text_tokens"] * p["cache_read_input_token_cost"]
            + (inp["audio_tokens"] - cached["audio_tokens"]) * p["input_cost_per_audio_token"]
            + cached["audio_tokens"] * p["cache_read_input_audio_token_cost"]
            + out["text_tokens"] * p["output_cost_per_token"] + out["audio_tokens"] * p["output_cost_per_audio_token"])


def realtime_rows(gw: Gateway, key_id: str) -> list[dict]:
    return sorted((r for r in gw.rows() if r["endpoint"] == "realtime" and r["api_key_id"] == key_id),
                  key=lambda r: r["created_at"])


def test_the_sdk_talks_through_the_gateway_and_each_response_is_a_row_charged_to_the_key(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    key = new_key(gw, budget_usd=10.0)
    client = gw.openai(api_key=key["secret"])
    with client.realtime.connect(model="voice") as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(session={"type": "realtime", "instructions": "be brief"})
        assert conn.recv().type == "session.updated"
        for _ in range(2):
            conn.response.create()
            kinds, transcript = [], ""
            for event in conn:
                kinds.append(event.type)
                if event.type == "response.output_audio_transcript.delta":
                    transcript += event.delta
                if event.type == "response.done":
                    assert event.response.usage is not None and event.response.usage.output_tokens == 50
                    break
            assert kinds[0] == "response.created" and transcript == "".join(DELTAS)
    upstream = mock.last
    assert upstream.path == "/v1/realtime?model=gpt-realtime"
    assert upstream.headers["authorization"] == "Bearer sk-upstream"  # the deployment's key, never the client's
    sent = [json.loads(frame)["type"] for frame in upstream.received]
    assert sent == ["session.update", "response.create", "response.create"]
    assert upstream.closed.wait(10) and upstream.close_code == 1000  # the client left: upstream closed at once

    rows = wait_until(lambda: len(r := realtime_rows(gw, key["id"])) == 2 and r, what="two realtime rows")
    cost = response_cost()
    for row in rows:
        assert (row["model"], row["deployment"], row["status"]) == ("voice", "voice#0", "ok")
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (40, 50, 10)
        assert row["cost_usd"] == pytest.approx(cost)
        assert row["latency_s"] > 0 and row["ttft_s"] is not None and row["finish_reason"] == "completed"
        assert row["extra"]["realtime"]["tokens"]["output_audio"] == 42
    assert len({row["extra"]["realtime"]["response_id"] for row in rows}) == 2  # a row a response
    assert rows[0]["extra"]["realtime"]["upstream_session"] == rows[1]["extra"]["realtime"]["upstream_session"]
    with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as http:
        spent = wait_until(lambda: http.get(f"/v1/keys/{key['id']}").json()["spent_usd"] or None, what="spend")
        metrics = http.get("/metrics").text
    assert spent == pytest.approx(2 * cost)
    assert 'pitstop_realtime_sessions_total{model="voice"}' in metrics
    assert 'pitstop_realtime_events_total{direction="client",model="voice"} 3.0' in metrics


async def agents_sdk_turn(url: str, secret: str) -> list[str]:
    """One turn of an Agents SDK realtime session, pointed at `url`: the events it saw, to the agent's end."""
    agent = RealtimeAgent(name="voice", instructions="be brief")
    session = await RealtimeRunner(agent).run(model_config={"url": url, "api_key": secret})
    seen: list[str] = []
    async with session:
        await session.send_message("hello")
        async for event in session:
            seen.append(getattr(getattr(event, "data", None), "type", None) or event.type)
            if event.type == "agent_end":
                return seen
    return seen


def test_an_agents_sdk_realtime_session_runs_a_turn_through_the_gateway(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    key = new_key(gw)
    seen = asyncio.run(asyncio.wait_for(agents_sdk_turn(ws_url(gw, "model=voice"), key["secret"]), 30))
    assert {"turn_started", "transcript_delta", "usage", "turn_ended", "agent_end"} <= set(seen)
    assert "error" not in seen
    sent = [json.loads(frame)["type"] for frame in mock.last.received]
    assert sent[0] == "session.update" and {"conversation.item.create", "response.create"} <= set(sent)
    rows = wait_until(lambda: realtime_rows(gw, key["id"]), what="the turn's row")
    assert [(r["status"], r["completion_tokens"]) for r in rows] == [("ok", 50)]


def test_a_browser_key_subprotocol_binary_and_malformed_frames_and_an_upstream_close_pass_through(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    key = new_key(gw)
    with connect(ws_url(gw, "model=voice", "/realtime"),
                 subprotocols=["realtime", f"openai-insecure-api-key.{key['secret']}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "realtime"
        assert events_until(ws, "session.created")
        ws.send(b"\x00\x01 audio bytes")
        assert ws.recv(timeout=10) == b"\x00\x01 audio bytes"
        ws.send("not json{")
        assert events_until(ws, "error")[-1]["error"]["code"] == "invalid_json"  # upstream judged it
        assert mock.last.received[-1] == "not json{"
        ws.send(json.dumps({"type": "mock.close", "code": 4001, "reason": "bye now"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye now")  # type: ignore[union-attr]


def test_an_upstream_close_without_a_status_closes_the_client_1000_not_1005(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    """1005 is what a peer reports for a close frame with no code; no endpoint may send it (RFC 6455 7.4.1)."""
    gw, mock = served
    key = new_key(gw)
    with connect(ws_url(gw, "model=voice"), additional_headers={"authorization": f"Bearer {key['secret']}"}) as ws:
        assert events_until(ws, "session.created")
        ws.send(json.dumps({"type": "response.create"}))
        assert events_until(ws, "response.done")
        ws.send(json.dumps({"type": "mock.close", "code": None}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert mock.last.closed.wait(10) and mock.last.close_code == 1005  # no status sent (nor echoed back)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (  # type: ignore[union-attr]
        1000, "the upstream closed the session")
    rows = wait_until(lambda: realtime_rows(gw, key["id"]), what="the response's row")
    assert [r["status"] for r in rows] == ["ok"]  # the session's one response, no more


def refusal(gw: Gateway, query: str, secret: str | None) -> tuple[int, dict]:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(gw, query), additional_headers=headers)
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")["error"]


def test_refusals_are_openai_errors_before_the_upgrade(served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    before = len(mock.connections)
    key = new_key(gw)
    narrow = new_key(gw, models=["chatty"])
    assert refusal(gw, "model=voice", "sk-pitstop-not-a-key")[0] == 401
    status, error = refusal(gw, "model=voice", narrow["secret"])
    assert (status, error["code"]) == (403, "model_not_allowed")
    status, error = refusal(gw, "model=nope", key["secret"])
    assert (status, error["code"]) == (404, "model_not_found")
    status, error = refusal(gw, "model=chatty", key["secret"])
    assert (status, error["code"]) == (400, "model_not_supported")
    with gw.openai(api_key=key["secret"]) as client, pytest.raises(openai.BadRequestError) as chat:  # and back
        client.chat.completions.create(model="voice", messages=[{"role": "user", "content": "hi"}])
    assert "/v1/realtime" in chat.value.message and chat.value.code == "model_not_supported"
    assert refusal(gw, "voice=1", key["secret"])[0] == 400
    status, error = refusal(gw, "model=dead-alone", key["secret"])  # its one deployment unreachable, no fallback
    assert (status, error["code"]) == (502, "upstream_unavailable") and "dead-alone#0" in error["message"]
    assert len(mock.connections) == before  # nothing refused reached upstream
    once = new_key(gw, rpm_limit=1)  # a connection takes a request's rate slot
    with connect(ws_url(gw, "model=voice"), additional_headers={"authorization": f"Bearer {once['secret']}"}) as ws:
        events_until(ws, "session.created")
    status, error = refusal(gw, "model=voice", once["secret"])
    assert (status, error["code"]) == (429, "rate_limit_exceeded")


def test_a_spent_budget_ends_the_session_and_refuses_the_next(served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, _ = served
    key = new_key(gw, budget_usd=response_cost() / 2)
    auth = {"authorization": f"Bearer {key['secret']}"}
    with connect(ws_url(gw, "model=voice"), additional_headers=auth) as ws:
        events_until(ws, "session.created")
        ws.send(json.dumps({"type": "response.create"}))
        events_until(ws, "response.done")
        error = events_until(ws, "error")[-1]["error"]
        assert error["code"] == "budget_exceeded"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008  # type: ignore[union-attr]
    status, error = refusal(gw, "model=voice", key["secret"])
    assert (status, error["code"]) == (429, "budget_exceeded")


def test_a_response_is_charged_to_the_keys_team_whose_spent_budget_ends_the_session(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, _ = served
    team = TeamStore(gw.storage_url).create("voices", budget_usd=response_cost() / 2)
    key_id, secret = KeyStore(gw.storage_url).create("member", budget_usd=10.0, team_id=team.id)
    with connect(ws_url(gw, "model=voice"), additional_headers={"authorization": f"Bearer {secret}"}) as ws:
        events_until(ws, "session.created")
        ws.send(json.dumps({"type": "response.create"}))
        error = events_until(ws, "error")[-1]["error"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert error["code"] == "budget_exceeded" and "team 'voices'" in error["message"]
    gw.flush()
    assert TeamStore(gw.storage_url).get(team.id).spent_usd == pytest.approx(response_cost())  # type: ignore[union-attr]
    assert KeyStore(gw.storage_url).get(key_id).spent_usd == pytest.approx(response_cost())  # type: ignore[union-attr]


def test_an_upstream_crash_mid_response_closes_the_client_1011_and_leaves_an_error_row(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    key = new_key(gw)
    mock.die_mid_response = True
    try:
        with connect(ws_url(gw, "model=voice"), additional_headers={"authorization": f"Bearer {key['secret']}"}) as ws:
            events_until(ws, "session.created")
            ws.send(json.dumps({"type": "response.create"}))
            events_until(ws, "response.output_audio_transcript.delta")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
    finally:
        mock.die_mid_response = False
    assert closed.value.rcvd.code == 1011  # type: ignore[union-attr]
    rows = wait_until(lambda: realtime_rows(gw, key["id"]), what="the cut response's row")
    assert [(r["status"], r["cost_usd"]) for r in rows] == [("error", 0.0)]
    assert "before response.done" in rows[0]["error"]


def test_azure_deployment_spelling_and_url_and_a_fallback_past_a_dead_deployment(
        served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    auth = {"authorization": f"Bearer {new_key(gw)['secret']}"}
    with connect(ws_url(gw, "deployment=azvoice", "/realtime"), additional_headers=auth) as ws:
        events_until(ws, "session.created")
    azure = mock.last
    assert azure.path == "/openai/realtime?api-version=2025-04-01-preview&deployment=my-voice"
    assert azure.headers["api-key"] == "az-key" and "authorization" not in azure.headers
    with connect(ws_url(gw, "model=dead-voice"), additional_headers=auth) as ws:
        events_until(ws, "session.created")
        assert ws.response.headers["x-pitstop-model"] == "voice"  # dead-voice's fallback
    assert mock.last.headers["authorization"] == "Bearer sk-upstream"


def test_the_drains_cut_closes_a_session_1012_and_its_upstream_1001(served: tuple[Gateway, RealtimeUpstream]) -> None:
    gw, mock = served
    assert gw.state is not None
    drain = gw.state.drain
    with connect(ws_url(gw, "model=voice"), additional_headers={"authorization": f"Bearer {new_key(gw)['secret']}"}) \
            as ws:
        events_until(ws, "session.created")
        wait_until(lambda: len(drain._tasks) == 1, what="earlier tests' sessions ended")
        session = next(iter(drain._tasks))  # this session's handler, tracked by the drain
        session.get_loop().call_soon_threadsafe(drain.cut_all)  # as graceful_shutdown_s running out does
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    drain.cut = False  # the module's gateway serves on
    assert closed.value.rcvd.code == 1012  # type: ignore[union-attr]
    assert mock.last.closed.wait(10) and mock.last.close_code == 1001


def test_the_upstream_connection_goes_through_outbound_proxy(tmp_path: Path) -> None:
    with realtime_upstream() as mock, forward_proxy() as (proxy, proxy_url):
        raw = {**config(tmp_path, mock), "outbound": {"proxy": proxy_url}}
        with running_gateway(raw) as gw:
            auth = {"authorization": f"Bearer {new_key(gw)['secret']}"}
            with connect(ws_url(gw, "model=voice"), additional_headers=auth) as ws:
                events_until(ws, "session.created")
                ws.send(json.dumps({"type": "response.create"}))
                events_until(ws, "response.done")
    assert proxy.seen() == [f"CONNECT 127.0.0.1:{mock.port}"]  # tunnelled: the frames pass it unread


def test_a_gateway_shutdown_closes_open_sessions_1012_and_their_upstreams(tmp_path: Path) -> None:
    with realtime_upstream() as mock, ExitStack() as stack:
        gw = stack.enter_context(running_gateway(config(tmp_path, mock)))
        key = new_key(gw)
        ws = connect(ws_url(gw, "model=voice"), additional_headers={"authorization": f"Bearer {key['secret']}"})
        events_until(ws, "session.created")
        stopping = threading.Thread(target=stack.close)
        stopping.start()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        stopping.join(30)
        assert closed.value.rcvd.code == 1012  # type: ignore[union-attr]
        assert mock.last.closed.wait(10)
    with pytest.raises(httpx.HTTPError):
        httpx.get(gw.url + "/healthz", timeout=1)


def test_pitstop_serve_takes_permessage_deflate_only_where_websocket_deflate_is_on(tmp_path: Path) -> None:
    """uvicorn's default takes it from any client that offers it; the gateway's (bench.realtime_compression) not."""
    with realtime_upstream() as mock:
        configs = []
        for deflate in (False, True):
            folder = tmp_path / f"deflate-{deflate}"
            folder.mkdir()
            raw = gateway_config(folder, [realtime_entry("voice", mock.url + "/v1", api_key="sk-upstream")],
                                 server={"websocket_deflate": deflate})
            configs.append(write_config(folder / "gateway.yaml", raw))
        with gateway_processes(*configs) as gateways:
            for gateway, deflate in zip(gateways, (False, True), strict=True):
                url = gateway.url.replace("http://", "ws://") + "/v1/realtime?model=voice"
                with connect(url, compression="deflate") as ws:  # offered, as the Agents SDK and browsers do
                    events_until(ws, "session.created")
                    assert [e.name for e in ws.protocol.extensions] == (["permessage-deflate"] if deflate else [])
                    ws.send(json.dumps({"type": "mock.burst", "count": 3, "size": 6400, "audio": True}))
                    assert [json.loads(ws.recv(timeout=10))["delta"] for _ in range(3)] == audio_chunks(6400)[:3]
