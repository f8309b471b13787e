"""Remote MCP tools on the Responses API, over real sockets: the openai SDK against the gateway, the gateway
against a real MCP server (the `mcp` package, Streamable HTTP) and the mock upstream. The server's tools
are listed once a conversation (`mcp_list_tools`), offered to any model as functions, and the gateway
runs the loop: a call made (`mcp_call`), the model called again with its result, whole and streamed;
calls wait for the client's approval unless `require_approval` says otherwise, and an approval in the
next turn runs (or declines) them; a tool that fails is the item's error, a server that cannot list is a
424; `allowed_tools`, `max_tool_calls`, headers and bad input; the Agents SDK's HostedMCPTool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.mcp_server import McpSpy, mcp_server
from tests.gateway.upstream import UpstreamProcess

ANSWER = "from-a w1 w2 w3 w4"


@pytest.fixture(scope="module")
def spy() -> Iterator[McpSpy]:
    with mcp_server() as server:
        yield server


@pytest.fixture
def mcp(spy: McpSpy) -> McpSpy:
    spy.reset()
    return spy


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    raw = gateway_config(tmp_path_factory.mktemp("mcp"), [model_entry("up", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


def tool(spy: McpSpy, **fields: object) -> dict:
    return {"type": "mcp", "server_label": "weather", "server_url": spy.url, **fields}


def test_a_tool_is_listed_called_and_its_result_answered(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    with gw.openai() as client:
        raw = client.responses.with_raw_response.create(model="up", input="[tools:1] Oslo",
                                                        tools=[tool(mcp, require_approval="never")])  # type: ignore[list-item]
    response = raw.parse()
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, message = response.output
    assert [t.name for t in listed.tools] == ["forecast", "add", "broken"]  # type: ignore[union-attr]
    assert listed.tools[0].annotations["readOnlyHint"] is True  # type: ignore[union-attr,index]
    assert (call.name, call.server_label, call.output, call.error) == (  # type: ignore[union-attr]
        "forecast", "weather", "sunny in [tools:1] Oslo", None)
    assert mcp.calls == [("forecast", {"city": "[tools:1] Oslo"})]
    assert message.content[0].text == ANSWER  # type: ignore[union-attr]
    first, second = upstreams[0].stats()["bodies"]
    assert [t["function"]["name"] for t in first["tools"]] == ["forecast", "add", "broken"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][2]["content"] == "sunny in [tools:1] Oslo" and second["model"] == "up"
    # The Response's usage is both calls'; the second call is an outcome row of its own.
    assert response.usage.output_tokens == 5 + 5  # type: ignore[union-attr]  # the mock bills its answer's words
    rows = gw.rows()
    follow = [r for r in rows if (r["extra"] or {}).get("mcp_of") == raw.headers["x-pitstop-request-id"]]
    assert len(follow) == 1 and follow[0]["status"] == "ok"


def test_a_call_waits_for_approval_by_default_and_runs_once_approved(gw: Gateway, mcp: McpSpy,
                                                                     upstreams: tuple) -> None:
    with gw.openai() as client:
        asked = client.responses.create(model="up", input="[tools:1] Bergen", tools=[tool(mcp)])  # type: ignore[list-item]
        assert [item.type for item in asked.output] == ["mcp_list_tools", "mcp_approval_request"]
        request = asked.output[1]
        assert request.name == "forecast" and '"city"' in request.arguments and not mcp.calls  # type: ignore[union-attr]
        approved = client.responses.create(model="up", previous_response_id=asked.id, tools=[tool(mcp)],  # type: ignore[list-item]
                                           input=[{"type": "mcp_approval_response", "approve": True,
                                                   "approval_request_id": request.id}])
    assert [item.type for item in approved.output] == ["mcp_call", "message"]
    assert approved.output[0].approval_request_id == request.id  # type: ignore[union-attr]
    assert approved.output[0].output == "sunny in [tools:1] Bergen"  # type: ignore[union-attr]
    assert mcp.methods["tools/call"] == 1  # no second listing: the chain's mcp_list_tools item serves this turn
    assert mcp.methods["server/discover"] == 1  # the chain's connection, kept from its first turn
    sent = upstreams[0].stats()["bodies"][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"] and sent[2]["content"].startswith("sunny")


def test_a_declined_call_is_not_made_and_the_model_is_told(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    with gw.openai() as client:
        asked = client.responses.create(model="up", input="[tools:1] Rome", tools=[tool(mcp)], store=False)  # type: ignore[list-item]
        items = [item.model_dump(exclude_none=True) for item in asked.output]
        declined = client.responses.create(model="up", tools=[tool(mcp)], store=False, input=[  # type: ignore[list-item]
            {"role": "user", "content": "[tools:1] Rome"}, *items,
            {"type": "mcp_approval_response", "approve": False, "approval_request_id": items[1]["id"],
             "reason": "not today"}])
    assert [item.type for item in declined.output] == ["mcp_call", "message"]
    assert declined.output[0].status == "failed" and not mcp.calls  # type: ignore[union-attr]
    assert mcp.methods["tools/list"] == 1  # the item sent back serves as the listing
    assert upstreams[0].stats()["bodies"][-1]["messages"][-1]["content"] == \
        "error: the user declined this call: not today"


def test_streamed_the_loop_sends_each_items_events(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    with gw.openai() as client:
        events = list(client.responses.create(model="up", input="[tools:1] Lima", stream=True,
                                              tools=[tool(mcp, require_approval="never")]))  # type: ignore[list-item]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    order = ["response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
             "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
             "response.mcp_call.completed", "response.output_text.delta", "response.output_text.done"]
    assert [k for k in dict.fromkeys(kinds) if k in order] == order  # each kind's first, in this order
    assert kinds.count("response.output_text.delta") == 5  # the answer after the call streamed as it came
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert final.usage.output_tokens == 10  # type: ignore[union-attr]  # both calls' (the mock bills words)
    assert final.output[1].output == "sunny in [tools:1] Lima" and final.output[2].content[0].text == ANSWER  # type: ignore[union-attr]
    done = [e.item.type for e in events if e.type == "response.output_item.done"]  # type: ignore[union-attr]
    assert done == ["mcp_list_tools", "mcp_call", "message"]
    assert len({item.id for item in final.output}) == 3


def test_a_tool_that_fails_is_the_items_error_and_the_model_goes_on(gw: Gateway, mcp: McpSpy,
                                                                   upstreams: tuple) -> None:
    with gw.openai() as client:
        response = client.responses.create(model="up", input="[tools:1] anything",
                                           tools=[tool(mcp, require_approval="never", allowed_tools=["broken"])])  # type: ignore[list-item]
    call = response.output[1]
    assert call.type == "mcp_call" and call.status == "failed" and call.output is None  # type: ignore[union-attr]
    assert call.error.type == "mcp_tool_execution_error"  # type: ignore[union-attr]
    assert response.output[-1].type == "message"
    first, second = upstreams[0].stats()["bodies"]
    assert [t["function"]["name"] for t in first["tools"]] == ["broken"]  # allowed_tools
    assert second["messages"][-1]["content"].startswith("error:")


def test_max_tool_calls_ends_the_loop(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    """The mock keeps calling until three results follow the question; one call is allowed."""
    with gw.openai() as client:
        response = client.responses.create(model="up", input="[tools:3] Oslo", max_tool_calls=1,
                                           tools=[tool(mcp, require_approval="never")])  # type: ignore[list-item]
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert upstreams[0].stats()["bodies"][-1]["tool_choice"] == "none"


def test_approval_filters_and_headers(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    """Read-only tools approved beforehand; the request's headers and token go to the server."""
    never = {"never": {"read_only": True}}
    with gw.openai() as client:
        response = client.responses.create(model="up", input="[tools:1] Oslo", tools=[tool(  # type: ignore[list-item]
            mcp, require_approval=never, headers={"x-team": "blue"}, authorization="tok-1")])
        waits = client.responses.create(model="up", input="[tools:1] 2", tools=[tool(  # type: ignore[list-item]
            mcp, require_approval=never, allowed_tools={"tool_names": ["add"]})])
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]  # forecast: read-only
    assert [item.type for item in waits.output] == ["mcp_list_tools", "mcp_approval_request"]  # add: not
    assert all(h.get("x-team") == "blue" and h.get("authorization") == "Bearer tok-1" for h in mcp.headers[:2])
    echoed = response.tools[0].model_dump(exclude_none=True)  # the Response repeats no credentials
    assert "authorization" not in echoed and echoed["headers"] == {"x-team": "<redacted>"}


def test_a_server_that_cannot_list_is_a_424(gw: Gateway, upstreams: tuple) -> None:
    with gw.openai() as client, pytest.raises(openai.APIStatusError) as failed:
        client.responses.create(model="up", input="hi", tools=[{  # type: ignore[list-item]
            "type": "mcp", "server_label": "gone", "server_url": "http://127.0.0.1:9/mcp", "require_approval": "never"}])
    assert failed.value.status_code == 424 and failed.value.body["param"] == "tools[0].server_url"  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 0


@pytest.mark.parametrize(("tools", "extra", "param"), [
    ([{"type": "mcp", "server_label": "w"}], {}, "tools[0].server_url"),
    ([{"type": "mcp", "server_label": "w", "server_url": "http://x", "connector_id": "connector_gmail"}], {},
     "tools[0].connector_id"),
    ([{"type": "mcp", "server_label": "w", "server_url": "http://x", "require_approval": "sometimes"}], {},
     "tools[0].require_approval"),
    ([{"type": "mcp", "server_label": "w", "server_url": "http://x"}] * 2, {}, "tools[1].server_label"),
    ([{"type": "mcp", "server_label": "w", "server_url": "http://x", "allowed_tools": "add"}], {},
     "tools[0].allowed_tools"),
    ([{"type": "mcp", "server_label": "w", "server_url": "http://x", "colour": "red"}], {}, "tools[0].colour"),
])
def test_a_bad_mcp_tool_is_a_400_naming_its_field(gw: Gateway, upstreams: tuple, tools: list, extra: dict,
                                                  param: str) -> None:
    with gw.openai() as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="up", input="hi", tools=tools, **extra)  # type: ignore[arg-type]
    assert refused.value.body["param"] == param  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 0


def test_bad_approvals_and_limits_are_400s(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    with gw.openai() as client:
        with pytest.raises(openai.BadRequestError) as unknown:
            client.responses.create(model="up", tools=[tool(mcp)], input=[  # type: ignore[list-item]
                {"type": "mcp_approval_response", "approve": True, "approval_request_id": "mcpr_nope"}])
        with pytest.raises(openai.BadRequestError) as limit:
            client.responses.create(model="up", input="hi", tools=[tool(mcp)], max_tool_calls=0)  # type: ignore[list-item]
    assert unknown.value.body["param"] == "input[0].approval_request_id"  # type: ignore[index]
    assert limit.value.body["param"] == "max_tool_calls"  # type: ignore[index]
    assert upstreams[0].stats()["requests"] == 0


def test_the_agents_sdks_hosted_mcp_tool(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    from agents import Agent, HostedMCPTool, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)

    async def run() -> object:
        async with gw.async_openai() as client:
            agent = Agent(name="forecaster", instructions="answer briefly",
                          tools=[HostedMCPTool(tool_config=tool(mcp, require_approval="never"))],  # type: ignore[arg-type]
                          model=OpenAIResponsesModel(model="up", openai_client=client))
            return await Runner.run(agent, "[tools:1] weather in Oslo")

    result = asyncio.run(run())
    assert result.final_output == ANSWER  # type: ignore[attr-defined]
    assert mcp.calls == [("forecast", {"city": "[tools:1] weather in Oslo"})]
    kinds = [item.type for item in result.new_items]  # type: ignore[attr-defined]
    assert "mcp_list_tools_item" in kinds and "message_output_item" in kinds


def test_an_approved_call_streams_before_the_answer(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    with gw.openai() as client:
        asked = client.responses.create(model="up", input="[tools:1] Kyiv", tools=[tool(mcp)])  # type: ignore[list-item]
        events = list(client.responses.create(model="up", previous_response_id=asked.id, tools=[tool(mcp)], stream=True,  # type: ignore[list-item]
                                              input=[{"type": "mcp_approval_response", "approve": True,
                                                      "approval_request_id": asked.output[1].id}]))
    kinds = [e.type for e in events]
    order = ["response.mcp_call_arguments.done", "response.mcp_call.completed", "response.output_text.delta"]
    assert [k for k in dict.fromkeys(kinds) if k in order] == order  # each kind's first, in this order
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["mcp_call", "message"]
    assert final.output[0].output == "sunny in [tools:1] Kyiv"  # type: ignore[union-attr]


def test_tool_choice_names_an_mcp_tool(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    with gw.openai() as client:
        client.responses.create(model="up", input="[tools:0] 2", tools=[tool(mcp, require_approval="never")],  # type: ignore[list-item]
                                tool_choice={"type": "mcp", "server_label": "weather", "name": "add"})
    assert upstreams[0].stats()["bodies"][0]["tool_choice"] == {"type": "function", "function": {"name": "add"}}


def test_a_server_gone_by_the_call_is_the_items_error(gw: Gateway, mcp: McpSpy, upstreams: tuple) -> None:
    """Listed in the first turn, approved in the second after the server went away: the call fails as an
    http_error item, and the model still answers."""
    gone = {"type": "mcp", "server_label": "weather", "server_url": "http://127.0.0.1:9/mcp"}
    with gw.openai() as client:
        asked = client.responses.create(model="up", input="[tools:1] Oslo", tools=[tool(mcp)])  # type: ignore[list-item]
        approved = client.responses.create(model="up", previous_response_id=asked.id, tools=[gone],  # type: ignore[list-item]
                                           input=[{"type": "mcp_approval_response", "approve": True,
                                                   "approval_request_id": asked.output[1].id}])
    call = approved.output[0]
    assert call.type == "mcp_call" and call.status == "failed" and call.error.type == "http_error"  # type: ignore[union-attr]
    assert approved.output[-1].type == "message" and not mcp.calls
    assert upstreams[0].stats()["bodies"][-1]["messages"][-1]["content"].startswith("error:")


def test_a_responses_calls_share_its_connection_and_other_responses_open_their_own(gw: Gateway, mcp: McpSpy,
                                                                                   upstreams: tuple) -> None:
    """The mock calls a tool until three results follow the question: one handshake and one listing serve
    the Response's listing and all three calls (a connection per call made three of each more)."""
    with gw.openai() as client:
        response = client.responses.create(model="up", input="[tools:3] Oslo", tools=[tool(mcp, require_approval="never")])  # type: ignore[list-item]
        assert [item.type for item in response.output] == ["mcp_list_tools", *["mcp_call"] * 3, "message"]
        assert mcp.methods == {"server/discover": 1, "tools/list": 1, "tools/call": 3}
        client.responses.create(model="up", input="[tools:1] Rome", tools=[tool(mcp, require_approval="never")],  # type: ignore[list-item]
                                store=False)
    assert mcp.methods["server/discover"] == 2  # another conversation: a connection of its own
    assert gw.state is not None and len(gw.state.responses.mcp) >= 2  # kept until idle, or the gateway stops
