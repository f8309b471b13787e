"""The OpenAI Agents SDK (`openai-agents`) against the gateway over a real socket: an agent with a
function tool runs its loop on the Responses API, keeping its history in a server-side conversation
(`conversation_id=`), in an `OpenAIConversationsSession`, or in a chain of stored responses
(`auto_previous_response_id`), and the gateway serves its turns as one agent session; an
`OpenAIResponsesCompactionSession` compacts its history with the gateway's /v1/responses/compact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest
from agents import (
    Agent,
    OpenAIConversationsSession,
    OpenAIResponsesCompactionSession,
    OpenAIResponsesModel,
    Runner,
    SQLiteSession,
    function_tool,
    set_tracing_disabled,
)

from gateway.compaction_items import SUMMARY_LEAD
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.test_gateway_stored_responses import user
from tests.gateway.upstream import UpstreamProcess

set_tracing_disabled(True)  # traces would go to OpenAI's servers


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # "gpt-4.1": the SDK compacts only with models named as OpenAI's are (the mock answers for it too).
    raw = gateway_config(tmp_path_factory.mktemp("agents"), [model_entry("up", upstream_processes[0].api_base),
                                                              model_entry("gpt-4.1", upstream_processes[0].api_base)])
    with running_gateway(raw) as gateway:
        yield gateway


@function_tool
def forecast(q: str) -> str:
    """The weather a question asks about (the mock upstream passes the question as `q`)."""
    return f"sunny, for {q!r}"


def _agent(client: openai.AsyncOpenAI) -> Agent:
    return Agent(name="forecaster", instructions="answer briefly", tools=[forecast],
                 model=OpenAIResponsesModel(model="up", openai_client=client))


def _sent(upstreams: tuple) -> list[dict]:
    return upstreams[0].stats()["bodies"][-1]["messages"]


def test_an_agent_keeps_its_history_in_a_server_side_conversation(gw: Gateway, upstreams: tuple) -> None:
    async def run() -> tuple[str, list, list, str]:
        async with gw.async_openai() as client:
            conversation = await client.conversations.create()
            agent = _agent(client)
            first = await Runner.run(agent, "[tools:1] weather in Oslo", conversation_id=conversation.id)
            second = await Runner.run(agent, "[tools:1] and in Bergen", conversation_id=conversation.id)
            items = [item async for item in client.conversations.items.list(conversation.id, order="asc")]
            return conversation.id, [first, second], items, second.last_response_id or ""

    conversation, results, items, last = asyncio.run(run())
    assert [r.final_output for r in results] == ["from-a w1 w2 w3 w4"] * 2
    assert [item.type for item in items] == ["message", "function_call", "function_call_output", "message"] * 2
    outputs = [item.output for item in items if item.type == "function_call_output"]  # type: ignore[union-attr]
    assert outputs == ["sunny, for '[tools:1] weather in Oslo'", "sunny, for '[tools:1] and in Bergen'"]
    # Each model call sent only what was new; the gateway served it after the conversation's items.
    messages = _sent(upstreams)
    assert messages[0] == {"role": "system", "content": "answer briefly"}
    assert messages[1] == user("[tools:1] weather in Oslo") and messages[-3] == user("[tools:1] and in Bergen")
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "tool", "assistant", "user", "assistant", "tool"]
    # Four model calls, one agent session named by the conversation, the tool's time its wait.
    row = gw.row("req-" + last.removeprefix("resp_"))
    assert row["session_id"] == conversation and row["turn"] == 4
    with gw.http() as http:
        assert http.get(f"/v1/sessions/{conversation}").json()["turns"] == 4


def test_an_agent_keeps_its_history_in_an_openai_conversations_session(gw: Gateway, upstreams: tuple) -> None:
    """The SDK's own session: it reads the conversation's items, sends them whole, and adds the new ones."""
    async def run() -> tuple[list, list]:
        async with gw.async_openai() as client:
            session = OpenAIConversationsSession(openai_client=client)
            agent = _agent(client)
            results = [await Runner.run(agent, f"[tools:1] weather in {city}", session=session)
                       for city in ("Oslo", "Bergen")]
            return results, await session.get_items()

    results, items = asyncio.run(run())
    assert [r.final_output for r in results] == ["from-a w1 w2 w3 w4"] * 2
    assert [item["type"] for item in items] == ["message", "function_call", "function_call_output", "message"] * 2
    messages = _sent(upstreams)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant",
                                             "tool"]
    assert messages[3]["content"] == "sunny, for '[tools:1] weather in Oslo'"


def test_an_agent_chains_its_turns_by_previous_response_id(gw: Gateway, upstreams: tuple) -> None:
    """The SDK's third way: each model call continues the last stored response by id, within a run
    (`auto_previous_response_id`) and across runs (`previous_response_id`); the chain is one session."""
    async def run() -> tuple[list, str]:
        async with gw.async_openai() as client:
            agent = _agent(client)
            first = await Runner.run(agent, "[tools:1] weather in Oslo", auto_previous_response_id=True)
            second = await Runner.run(agent, "[tools:1] and in Bergen", auto_previous_response_id=True,
                                      previous_response_id=first.last_response_id)
            chain_start = first.raw_responses[0].response_id or ""
            return [first, second], chain_start

    results, chain_start = asyncio.run(run())
    assert [r.final_output for r in results] == ["from-a w1 w2 w3 w4"] * 2
    messages = _sent(upstreams)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant",
                                             "tool"]
    last = results[-1].last_response_id or ""
    row = gw.row("req-" + last.removeprefix("resp_"))
    assert row["session_id"] == chain_start and row["turn"] == 3  # the chain's calls after its first


def test_an_agent_searches_a_vector_store_with_file_search_tool(gw: Gateway, upstreams: tuple) -> None:
    """The Agents SDK's FileSearchTool: the gateway searches the store the agent names, the model reads
    the excerpts, and the run's items include the search."""
    from agents import FileSearchTool

    async def run() -> tuple[list[str], str]:
        async with gw.async_openai() as client:
            uploaded = await client.files.create(file=("handbook.md", b"Holidays: every employee gets 30 days "
                                                       b"of paid leave a year, booked through the HR portal."),
                                                 purpose="assistants")
            store = await client.vector_stores.create(name="handbook", file_ids=[uploaded.id])
            while (await client.vector_stores.retrieve(store.id)).status != "completed":
                await asyncio.sleep(0.1)
            agent = Agent(name="hr", instructions="answer from the handbook",
                          tools=[FileSearchTool(vector_store_ids=[store.id], include_search_results=True)],
                          model=OpenAIResponsesModel(model="up", openai_client=client))
            result = await Runner.run(agent, "How many days of leave do I get?")
            return [item.type for item in result.new_items], result.final_output

    kinds, answer = asyncio.run(run())
    assert kinds[0] == "tool_call_item" and kinds[-1] == "message_output_item" and answer
    assert "30 days of paid leave" in _sent(upstreams)[0]["content"]


def test_an_agents_session_history_is_compacted_by_the_gateway(gw: Gateway, upstreams: tuple) -> None:
    """The SDK's compaction session calls `responses.compact` after a run and keeps what it returns as the
    history; the next run sends that, and the model sees the user's words, the summary, then the new turn."""
    async def run() -> tuple[list, list, list]:
        async with gw.async_openai() as client:
            session = OpenAIResponsesCompactionSession("agent-1", SQLiteSession("agent-1"), client=client,
                                                       model="gpt-4.1", should_trigger_compaction=lambda _: True)
            agent = Agent(name="forecaster", instructions="answer briefly", tools=[forecast],
                          model=OpenAIResponsesModel(model="gpt-4.1", openai_client=client))
            first = await Runner.run(agent, "[tools:1] weather in Oslo", session=session)
            compacted = await session.get_items()
            second = await Runner.run(agent, "[tools:1] and in Bergen", session=session)
            return [first, second], compacted, await session.get_items()

    results, compacted, final = asyncio.run(run())
    assert [r.final_output for r in results] == ["from-a w1 w2 w3 w4"] * 2
    assert [item.get("type", "message") for item in compacted] == ["message", "compaction"]  # type: ignore[union-attr]
    assert [item.get("type", "message") for item in final] == ["message", "message", "compaction"]  # type: ignore[union-attr]
    bodies = upstreams[0].stats()["bodies"]
    passes = [b for b in bodies if b["messages"][-1]["content"].startswith("Your context is about to be compacted")]
    assert len(passes) == 2
    # The second run's first call: the instructions, Oslo, the first summary, then Bergen.
    second_run = bodies[bodies.index(passes[0]) + 1]["messages"]
    assert [m["role"] for m in second_run] == ["system", "user", "user", "user"]
    assert second_run[1] == user("[tools:1] weather in Oslo") and second_run[2]["content"].startswith(SUMMARY_LEAD)
    assert second_run[3] == user("[tools:1] and in Bergen")
