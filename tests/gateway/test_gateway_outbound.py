"""The outbound URL policy over real sockets, with the openai SDK: a remote MCP tool's `server_url` and a
webhook endpoint's `url` on 127.0.0.1 refused (a 400 `url_not_allowed` naming the field, with its outcome
row) when `outbound.allow_private` is false, reached when `allowed_hosts` names the host or by default;
a name resolving to loopback (`localhost`) and an IPv4-mapped loopback refused even where 127.0.0.1 is
allowed; the clouds' metadata address refused by default; the section taken by a config reload; other
requests (to upstreams on 127.0.0.1) unaffected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.engine.serving import serve_in_thread
from tests.gateway.harness import (
    Gateway,
    Receiver,
    gateway_config,
    model_entry,
    running_gateway,
    write_config,
)
from tests.gateway.mcp_server import McpSpy, mcp_server
from tests.gateway.upstream import UpstreamProcess

MASTER = "sk-outbound-master"
AUTH = {"require_keys": True, "master_key": MASTER}
STRICT = {"allow_private": False, "allowed_hosts": ["127.0.0.1"]}  # only the one host named, of the private ones


class Reloadable:
    def __init__(self, gateway: Gateway, path: Path, raw: dict) -> None:
        self.gateway, self.path, self.raw = gateway, path, raw

    def outbound(self, **section: Any) -> None:
        """The config's `outbound:` rewritten and reloaded."""
        write_config(self.path, {**self.raw, "outbound": section})
        answer = httpx.post(f"{self.gateway.url}/config/reload", headers={"Authorization": f"Bearer {MASTER}"},
                            timeout=60)
        assert answer.status_code == 200, answer.text

    def client(self) -> openai.OpenAI:
        return self.gateway.openai(api_key=MASTER)


@pytest.fixture(scope="module")
def spy() -> Iterator[McpSpy]:
    with mcp_server() as server:
        yield server


@contextmanager
def reloadable_gateway(upstream: UpstreamProcess, tmp: Path) -> Iterator[Reloadable]:
    """A gateway (model `up` on `upstream`, the master key, quick webhook retries) whose `outbound:` a test rewrites."""
    raw = gateway_config(tmp, [model_entry("up", upstream.api_base)], auth=AUTH,
                         webhooks={"first_retry_s": 0.2, "max_retry_s": 0.5, "poll_s": 0.2})
    with running_gateway(raw, config_path=tmp / "pitstop.yaml") as gateway:
        yield Reloadable(gateway, tmp / "pitstop.yaml", raw)


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloadable]:
    with reloadable_gateway(upstream_processes[0], tmp_path_factory.mktemp("outbound")) as gateway:
        yield gateway


def mcp_tool(url: str) -> dict:
    return {"type": "mcp", "server_label": "weather", "server_url": url, "require_approval": "never"}


def refused(gw: Reloadable, url: str, match: str) -> openai.BadRequestError:
    """A Response offering the MCP server at `url` is a 400 naming `tools[0].server_url`."""
    with gw.client() as client, pytest.raises(openai.BadRequestError) as failed:
        client.responses.create(model="up", input="[tools:1] Oslo", tools=[mcp_tool(url)])  # type: ignore[list-item]
    body: dict = failed.value.body  # type: ignore[assignment]
    assert (body["param"], body["code"]) == ("tools[0].server_url", "url_not_allowed"), body
    assert match in body["message"], body["message"]
    return failed.value


def answered(gw: Reloadable, url: str) -> list[str]:
    with gw.client() as client:
        response = client.responses.create(model="up", input="[tools:1] Oslo", tools=[mcp_tool(url)])  # type: ignore[list-item]
    return [item.type for item in response.output]


def test_a_private_mcp_server_is_refused_unless_allowed(gw: Reloadable, spy: McpSpy, upstreams: tuple) -> None:
    spy.reset()
    gw.outbound(allow_private=False)
    failure = refused(gw, spy.url, "'127.0.0.1' is a loopback address (outbound.allow_private is false)")
    assert not spy.methods and upstreams[0].stats()["requests"] == 0  # nothing was sent anywhere
    row = gw.gateway.row(failure.response.headers["x-pitstop-request-id"])
    assert (row["status"], row["http_status"], row["endpoint"]) == ("error", 400, "responses")
    assert "url_not_allowed" in row["error"] or "loopback" in row["error"]
    gw.outbound(**STRICT)  # allowed_hosts names it
    assert answered(gw, spy.url) == ["mcp_list_tools", "mcp_call", "message"]
    assert spy.methods["tools/call"] == 1
    gw.outbound()  # the default: private addresses reached
    assert answered(gw, spy.url) == ["mcp_list_tools", "mcp_call", "message"]


def test_a_name_or_spelling_that_leads_to_loopback_is_refused(gw: Reloadable, spy: McpSpy) -> None:
    gw.outbound(**STRICT)
    port = httpx.URL(spy.url).port
    spy.reset()
    refused(gw, f"http://localhost:{port}/mcp", "'localhost' resolves to")  # its addresses, not its name
    refused(gw, f"http://[::ffff:127.0.0.1]:{port}/mcp", "loopback address")
    refused(gw, f"http://2130706433:{port}/mcp", "resolves to 127.0.0.1")
    assert not spy.methods


def test_the_metadata_address_is_refused_by_default(gw: Reloadable) -> None:
    gw.outbound()
    refused(gw, "http://169.254.169.254/mcp", "link-local address")
    refused(gw, "http://[::ffff:169.254.169.254]/mcp", "link-local address")
    gw.outbound(denied_hosts=["127.0.0.1"])  # and a denied host, whatever the address rules say
    refused(gw, "http://127.0.0.1:9/mcp", "denied_hosts")


def test_other_requests_are_unaffected(gw: Reloadable, upstreams: tuple) -> None:
    gw.outbound(allow_private=False)  # the upstream is on 127.0.0.1 too: the operator's, not a client's URL
    with gw.client() as client:
        answer = client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
        response = client.responses.create(model="up", input="hi")
    assert answer.choices[0].message.content and response.output_text


def test_a_webhook_endpoint_is_held_to_the_policy(gw: Reloadable) -> None:
    receiver = Receiver()
    with serve_in_thread(receiver.app()) as url, gw.client() as client:
        gw.outbound(**STRICT)
        port = httpx.URL(url).port
        endpoint = client.webhooks.create(name="local", url=f"http://localhost:{port}/hook",
                                          event_types=["response.completed"])  # its name passes; its address not
        with pytest.raises(openai.BadRequestError) as unreachable:
            client.post(f"/webhook_endpoints/{endpoint.id}/test", body={"event_type": "response.completed"},
                        cast_to=object)
        assert "resolves to" in str(unreachable.value) and not receiver.posts
        gw.outbound(allow_private=False)
        with pytest.raises(openai.BadRequestError) as made:
            client.webhooks.create(name="local", url=f"{url}/hook", event_types=["response.completed"])
        assert (made.value.body["param"], made.value.body["code"]) == ("url", "url_not_allowed")  # type: ignore[index]
        gw.outbound(**STRICT)
        allowed = client.webhooks.create(name="allowed", url=f"{url}/hook", event_types=["response.completed"])
        tested = client.post(f"/webhook_endpoints/{allowed.id}/test", body={"event_type": "response.completed"},
                             cast_to=object)
        assert tested["success"] and len(receiver.posts) == 1  # type: ignore[index]
