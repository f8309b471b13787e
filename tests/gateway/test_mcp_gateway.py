"""The gateway as an MCP server (/mcp, /mcp/{server}), over real sockets: two real upstream MCP servers (the
`mcp` package's MCPServer and low-level Server, Streamable HTTP, in threads) and one that is down, the
gateway under uvicorn, and a real `mcp` Client (and the Agents SDK's MCPServerStreamableHttp) through it.
What the gateway lists and answers is compared with what the same client gets from the upstream directly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from gateway.config import ConfigError, parse_settings
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.mcp_gateway_helpers import calc_server, mcp_client, sse_server
from tests.gateway.mcp_server import McpSpy, mcp_server
from tests.ports import free_port

MASTER = "sk-mcp-master"
TOKEN = "upstream-token-1"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[McpSpy, str, str]]:
    with mcp_server() as weather, calc_server() as calc:
        yield weather, calc, f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens on the last


@pytest.fixture(scope="module")
def legacy() -> Iterator[str]:
    with sse_server() as url:
        yield url


def servers(weather: McpSpy, calc: str, down: str, legacy: str) -> list[dict]:
    return [{"name": "weather", "url": weather.url, "authorization": "os.environ/PITSTOP_TEST_MCP_TOKEN",
             "headers": {"X-Team": "platform"}, "description": "the weather"},
            {"name": "calc", "url": calc},
            {"name": "down", "url": down},
            {"name": "only-forecast", "url": weather.url, "allowed_tools": ["forecast", "add"],
             "disallowed_tools": ["add"]},
            {"name": "legacy", "url": legacy, "transport": "sse"}]


@pytest.fixture(scope="module")
def gw(upstreams: tuple[McpSpy, str, str], legacy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("mcp_gateway")
    os.environ["PITSTOP_TEST_MCP_TOKEN"] = TOKEN
    raw = gateway_config(tmp, [model_entry("m", "http://127.0.0.1:9/v1")], mcp_servers=servers(*upstreams, legacy),
                         auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw, config_path=tmp / "config.yaml") as gateway:
        yield gateway


def admin(gw: Gateway, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, gw.url + path, json=body, headers={"Authorization": f"Bearer {MASTER}"})


@pytest.fixture(scope="module")
def keys(gw: Gateway) -> dict[str, str]:
    team = admin(gw, "POST", "/v1/teams", {"name": "calculators", "mcp_servers": ["calc"]}).json()
    made = {name: admin(gw, "POST", "/v1/keys", {"name": name, **fields}) for name, fields in {
        "all": {}, "weather": {"mcp_servers": ["weather"]}, "team": {"team_id": team["id"]},
        "none": {"mcp_servers": []}}.items()}
    assert all(r.status_code == 201 for r in made.values()), [r.text for r in made.values()]
    assert made["weather"].json()["mcp_servers"] == ["weather"] and team["mcp_servers"] == ["calc"]
    return {name: r.json()["secret"] for name, r in made.items()}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def listed(url: str, key: str | None = None) -> dict[str, mcp_types.Tool]:
    async with mcp_client(url, key) as client:
        return {t.name: t for t in (await client.list_tools()).tools}


async def called(url: str, key: str | None, name: str, arguments: dict) -> mcp_types.CallToolResult:
    async with mcp_client(url, key) as client:
        return await client.call_tool(name, arguments)


async def refused(url: str, key: str | None, name: str, arguments: dict) -> MCPError:
    try:
        await called(url, key, name, arguments)
    except BaseException as exc:  # the client's task group wraps what its block raised
        return unwrapped(exc)
    raise AssertionError(f"{name} was not refused")


def unwrapped(exc: BaseException) -> MCPError:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    assert isinstance(exc, MCPError), repr(exc)
    return exc


def same_tool(through: mcp_types.Tool, direct: mcp_types.Tool) -> bool:
    return through.model_dump(exclude={"name"}) == direct.model_dump(exclude={"name"})


def test_the_union_of_the_servers_tools_is_listed_prefixed_as_the_servers_list_them(
        gw: Gateway, keys: dict[str, str], upstreams: tuple[McpSpy, str, str]) -> None:
    weather, calc, _ = upstreams
    direct = {**{f"weather__{n}": t for n, t in run(listed(weather.url)).items()},
              **{f"calc__{n}": t for n, t in run(listed(calc)).items()}}
    through = run(listed(gw.url + "/mcp", keys["all"]))
    # `down` cannot list: left out, the others still offered; `only-forecast` offers what its filters leave.
    assert sorted(through) == sorted([*direct, "only-forecast__forecast", "legacy__echo"])
    for name, tool in direct.items():
        assert same_tool(through[name], tool), name  # description, schemas, annotations, title passed through
    assert through["calc__divide"].output_schema == {"type": "object", "properties": {"quotient": {"type": "number"}},
                                                     "required": ["quotient"]}
    # The config's credentials go upstream; the caller's Pitstop key never does.
    sent = [h for h in weather.headers if h.get("x-team") == "platform"]
    assert sent and all(h.get("authorization") == f"Bearer {TOKEN}" for h in sent)
    assert not any(keys["all"] in v for h in weather.headers for v in h.values())


def test_calls_relay_the_upstreams_results_and_errors(gw: Gateway, keys: dict[str, str],
                                                      upstreams: tuple[McpSpy, str, str]) -> None:
    weather, calc, _ = upstreams
    url, key = gw.url + "/mcp", keys["all"]
    for name, server, tool, arguments in (("weather__add", weather.url, "add", {"a": 2, "b": 3}),
                                          ("weather__broken", weather.url, "broken", {"q": "x"}),
                                          ("calc__divide", calc, "divide", {"a": 1, "b": 4})):
        through, direct = run(called(url, key, name, arguments)), run(called(server, None, tool, arguments))
        assert (through.content, through.structured_content, through.is_error) == (
            direct.content, direct.structured_content, direct.is_error), name
    assert run(called(url, key, "weather__broken", {"q": "x"})).is_error  # the tool's own error, as it is
    assert run(called(url, key, "calc__divide", {"a": 3, "b": 2})).structured_content == {"quotient": 1.5}
    protocol = run(refused(url, key, "calc__divide", {"a": 1, "b": 0}))  # the server's JSON-RPC error, relayed
    direct_error = run(refused(calc, None, "divide", {"a": 1, "b": 0}))
    assert (protocol.code, protocol.message) == (direct_error.code, direct_error.message) == (
        mcp_types.INVALID_PARAMS, "b must not be zero")
    down = run(called(url, key, "down__anything", {}))
    assert down.is_error and "the MCP server 'down' could not be reached" in down.content[0].text  # type: ignore[union-attr]
    unknown = run(refused(url, key, "nowhere__tool", {}))
    assert unknown.code == mcp_types.INVALID_PARAMS and "unknown tool 'nowhere__tool'" in unknown.message
    before = len(weather.calls)
    hidden = run(refused(url, key, "only-forecast__add", {"a": 1, "b": 1}))  # disallowed_tools: never sent
    assert "not offered" in hidden.message and len(weather.calls) == before
    assert run(called(url, key, "only-forecast__forecast", {"city": "Oslo"})).content[0].text == "sunny in Oslo"  # type: ignore[union-attr]


def test_a_call_is_one_upstream_request_on_the_kept_connection(gw: Gateway, keys: dict[str, str],
                                                               upstreams: tuple[McpSpy, str, str]) -> None:
    weather = upstreams[0]

    async def list_then_call() -> None:
        async with mcp_client(gw.url + "/mcp/weather", keys["all"]) as client:
            await client.list_tools()
            lists = weather.methods["tools/list"]
            for city in ("Oslo", "Rome", "Lima"):
                await client.call_tool("forecast", {"city": city})
            assert weather.methods["tools/list"] == lists  # no listing before each call

    calls, handshakes = weather.methods["tools/call"], weather.methods["server/discover"]
    run(list_then_call())
    assert weather.methods["tools/call"] == calls + 3 and weather.methods["server/discover"] == handshakes


def test_a_server_on_the_legacy_sse_transport_is_reached_too(gw: Gateway, keys: dict[str, str]) -> None:
    assert list(run(listed(gw.url + "/mcp/legacy", keys["all"]))) == ["echo"]
    answer = run(called(gw.url + "/mcp", keys["all"], "legacy__echo", {"text": "hi"}))
    assert answer.content[0].text == "echo: hi" and not answer.is_error  # type: ignore[union-attr]


def test_one_servers_endpoint_offers_its_tools_under_their_own_names(gw: Gateway, keys: dict[str, str],
                                                                    upstreams: tuple[McpSpy, str, str]) -> None:
    _, calc, _ = upstreams
    tools = run(listed(gw.url + "/mcp/calc", keys["all"]))
    assert list(tools) == ["divide"] and same_tool(tools["divide"], run(listed(calc))["divide"])
    assert run(called(gw.url + "/mcp/calc", keys["all"], "divide", {"a": 9, "b": 3})).structured_content == {
        "quotient": 3.0}
    assert list(run(listed(gw.url + "/mcp/only-forecast", keys["all"]))) == ["forecast"]
    with pytest.raises(BaseException) as down:  # noqa: B017  (an MCPError, in the client's task group)
        run(listed(gw.url + "/mcp/down", keys["all"]))
    assert "the MCP server 'down' could not list its tools" in unwrapped(down.value).message


def test_a_keys_and_its_teams_mcp_servers_bound_what_it_sees_and_calls(gw: Gateway, keys: dict[str, str]) -> None:
    url = gw.url + "/mcp"
    assert {n.split("__")[0] for n in run(listed(url, keys["weather"]))} == {"weather"}
    assert {n.split("__")[0] for n in run(listed(url, keys["team"]))} == {"calc"}  # its team's list
    assert run(listed(url, keys["none"])) == {}
    assert run(refused(url, keys["weather"], "calc__divide", {"a": 1, "b": 1})).code == mcp_types.INVALID_PARAMS
    post = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    alone = httpx.post(gw.url + "/mcp/calc", json=post, headers={"Authorization": f"Bearer {keys['weather']}"})
    assert alone.status_code == 403 and alone.json()["error"]["code"] == "mcp_server_not_allowed"
    typo = admin(gw, "POST", "/v1/keys", {"name": "typo", "mcp_servers": ["wether"]})
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "mcp_servers"
    team_id = next(k["team_id"] for k in admin(gw, "GET", "/v1/keys").json()["data"] if k["name"] == "team")
    beyond = admin(gw, "POST", "/v1/keys", {"name": "beyond", "team_id": team_id, "mcp_servers": ["weather"]})
    assert beyond.status_code == 400 and "not among the MCP servers of team 'calculators'" in beyond.json()[
        "error"]["message"]
    key_id = next(k["id"] for k in admin(gw, "GET", "/v1/keys").json()["data"] if k["name"] == "none")
    changed = admin(gw, "PATCH", f"/v1/keys/{key_id}", {"mcp_servers": ["calc"]})
    assert changed.status_code == 200 and changed.json()["mcp_servers"] == ["calc"]
    assert list(run(listed(url, keys["none"]))) == ["calc__divide"]  # the change reaches its next request


def test_requests_without_a_valid_key_are_401_and_unknown_servers_404(gw: Gateway, keys: dict[str, str]) -> None:
    post = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for headers in ({}, {"Authorization": "Bearer sk-pitstop-nope"}, {"x-api-key": "sk-pitstop-nope"}):
        for path in ("/mcp", "/mcp/calc"):
            answer = httpx.post(gw.url + path, json=post, headers=headers)
            assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key", (path, headers)
    through_header = httpx.post(gw.url + "/mcp/nope", json=post, headers={"x-api-key": keys["all"]})
    assert through_header.status_code == 404 and through_header.json()["error"]["code"] == "mcp_server_not_found"
    with pytest.raises(BaseException):  # noqa: B017  (the mcp client's own wrapping of the 401)
        run(listed(gw.url + "/mcp"))


def test_each_call_is_an_outcome_row_and_counted(gw: Gateway, keys: dict[str, str]) -> None:
    url = gw.url + "/mcp"
    run(called(url, keys["weather"], "weather__forecast", {"city": "Rome"}))
    run(called(url, keys["all"], "down__x", {}))
    run(called(url, keys["all"], "weather__broken", {"q": "x"}))  # each outcome made here: xdist may run the
    run(refused(url, keys["all"], "calc__divide", {"a": 1, "b": 0}))  # module's other tests on another worker
    rows = [r for r in gw.rows() if r["endpoint"] == "mcp"]
    forecast = [r for r in rows if (r["extra"] or {}).get("mcp_tool") == "forecast" and r["deployment"] == "weather"]
    assert forecast and forecast[-1]["status"] == "ok" and forecast[-1]["latency_s"] > 0
    assert forecast[-1]["extra"]["outcome"] == "ok" and forecast[-1]["api_key_id"] is not None
    down = [r for r in rows if r["deployment"] == "down"]
    assert down and down[-1]["status"] == "error" and "could not be reached" in down[-1]["error"]
    assert {r["extra"]["outcome"] for r in rows} >= {"ok", "tool_error", "protocol_error", "unreachable"}
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'pitstop_mcp_gateway_calls_total{outcome="ok",server="weather"}' in metrics
    assert 'pitstop_mcp_gateway_calls_total{outcome="unreachable",server="down"}' in metrics


def test_a_call_takes_a_rate_slot_and_a_refusal_is_a_json_rpc_error(gw: Gateway, keys: dict[str, str]) -> None:
    key = admin(gw, "POST", "/v1/keys", {"name": "slow", "rpm_limit": 2}).json()["secret"]
    url = gw.url + "/mcp"
    assert run(listed(url, key)) and run(listed(url, key))  # listings take no slot
    for _ in range(2):
        assert not run(called(url, key, "weather__forecast", {"city": "Oslo"})).is_error
    error = run(refused(url, key, "weather__forecast", {"city": "Oslo"}))
    assert error.error.code == -32029 and "rate limit" in error.error.message.lower()
    limited = [r for r in gw.rows() if r["endpoint"] == "mcp" and (r["extra"] or {}).get("outcome") == "rate_limited"]
    assert len(limited) == 1 and limited[0]["status"] == "error"
    assert 'pitstop_mcp_gateway_calls_total{outcome="rate_limited",server="weather"} 1.0' in \
        httpx.get(gw.url + "/metrics").text


def test_the_agents_sdks_streamable_http_server_through_the_gateway(gw: Gateway, keys: dict[str, str]) -> None:
    from agents.mcp import MCPServerStreamableHttp

    async def use() -> tuple[list[str], Any]:
        async with MCPServerStreamableHttp(params={"url": gw.url + "/mcp",
                                                   "headers": {"Authorization": f"Bearer {keys['all']}"}}) as server:
            tools = await server.list_tools()
            return [t.name for t in tools], await server.call_tool("calc__divide", {"a": 10, "b": 4})

    names, result = run(use())
    assert "calc__divide" in names and "weather__forecast" in names
    assert result.structured_content == {"quotient": 2.5} and not result.is_error


def test_a_reload_takes_a_changed_mcp_servers_section(gw: Gateway, keys: dict[str, str],
                                                      upstreams: tuple[McpSpy, str, str]) -> None:
    path = gw.state.settings.source_path  # type: ignore[union-attr]
    assert path is not None
    raw = yaml.safe_load(path.read_text())
    raw["mcp_servers"] = [*raw["mcp_servers"], {"name": "calc2", "url": upstreams[1]}]
    write_config(path, raw)
    report = admin(gw, "POST", "/config/reload")
    assert report.status_code == 200 and "mcp_servers" in report.json()["policies_changed"], report.text
    wait_until(lambda: "calc2__divide" in run(listed(gw.url + "/mcp", keys["all"])), what="calc2 listed")


@pytest.mark.parametrize(("server", "problem"), [
    ({"name": "a__b", "url": "http://x/mcp"}, "may not hold '__'"),
    ({"name": "a", "url": "ftp://x/mcp"}, "not an http(s) URL"),
    ({"name": "a", "url": "http://x/mcp", "tools": []}, "mcp_servers.0.tools"),
    ({"name": "a", "url": "http://x/mcp", "authorization": "os.environ/PITSTOP_TEST_UNSET_VAR"}, "not set"),
])
def test_the_section_is_validated_strictly(tmp_path: Path, server: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(gateway_config(tmp_path, [model_entry("m", "http://x/v1")], mcp_servers=[server]))
    assert problem in str(error.value)
    twice = [{"name": "a", "url": "http://x/mcp"}, {"name": "a", "url": "http://y/mcp"}]
    with pytest.raises(ConfigError, match="two MCP servers are named 'a'"):
        parse_settings(gateway_config(tmp_path, [model_entry("m", "http://x/v1")], mcp_servers=twice))


def test_migration_0030_adds_and_drops_the_mcp_servers_columns(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from alembic import command

    from storage.db import create_engine
    from storage.migrate import alembic_config, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)

    def columns() -> set[str]:
        inspector = sa.inspect(engine)
        return {c["name"] for c in inspector.get_columns("api_keys")} | {
            f"teams.{c['name']}" for c in inspector.get_columns("teams")}

    assert {"mcp_servers", "teams.mcp_servers"} <= columns()
    command.downgrade(alembic_config(engine.url.render_as_string(hide_password=False)), "0029")
    assert not {"mcp_servers", "teams.mcp_servers"} & columns()
    engine.dispose()
