"""The tool loop of a Responses turn with remote MCP tools, run by the gateway: the model's calls of MCP
tools become `mcp_call` items, the gateway calls the servers (gateway/mcp_client.py) and calls the model
again with the results, until it answers without calling one. A call the request does not approve
beforehand (`require_approval`) becomes an `mcp_approval_request` item and ends the Response; the
client's `mcp_approval_response` in its next turn runs it (or declines it) before the model is called.
Calls of the client's own functions end the Response too, as they always do.

The turn's first model call is the request's own (served, streamed and logged as any turn is); each
further call is a chat request of its own (`extra.mcp_of` names the turn in its outcome row), sent under
the turn's agent session, so it goes back to the engine instance that holds the conversation's KV while
the tool ran. `max_tool_calls` caps the MCP calls of a Response (the model is then told to answer), and
so does MAX_STEPS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.server.errors import bad_request
from gateway.auth import Caller
from gateway.mcp_client import CallResult, McpSession, call_tool, list_tools
from gateway.mcp_tools import McpServer, as_function, parsed_arguments
from gateway.responses_input import input_messages
from gateway.served import Serve, served_chat, served_chunks

if TYPE_CHECKING:
    from gateway.responses_api import ResponseEnvelope

MAX_STEPS = 16  # model calls a Response may make; past it, the model is told to answer
FAILURE = "the model call after the MCP tools' results failed"


@dataclass
class McpTools:
    """The turn's MCP tools: what each server lists (or listed earlier in the conversation) and allows."""

    servers: list[McpServer]
    session: McpSession  # the connections the turn's listing and calls go through
    by_name: dict[str, tuple[McpServer, dict]] = field(default_factory=dict)
    listed: list[dict] = field(default_factory=list)  # the turn's new `mcp_list_tools` items

    def functions(self) -> list[dict]:
        return [as_function(server, tool) for server, tool in self.by_name.values()]


async def listed_tools(servers: list[McpServer], context: list[dict], base: str, client_names: set[str],
                       session: McpSession) -> McpTools:
    """Each server's tools: from the latest `mcp_list_tools` item for its label in the conversation, else
    listed now (a new item). A 424 where a server cannot list; a 400 where two tools share a name."""
    tools = McpTools(servers, session)
    known = {item.get("server_label"): item for item in context
             if isinstance(item, dict) and item.get("type") == "mcp_list_tools" and not item.get("error")}
    fresh = [s for s in servers if s.label not in known]
    listings = await asyncio.gather(*(list_tools(s, session) for s in fresh))
    for i, (server, listing) in enumerate(zip(fresh, listings, strict=True)):
        known[server.label] = item = {"type": "mcp_list_tools", "id": f"mcpl_{base}_{i}", "server_label": server.label,
                                      "tools": listing}
        tools.listed.append(item)
    for server in servers:
        for tool in known[server.label].get("tools") or ():
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not server.allows(tool):
                continue
            if tool["name"] in tools.by_name or tool["name"] in client_names:
                raise bad_request(f"two tools are named {tool['name']!r} (MCP server {server.label!r} lists one)",
                                  server.where, "invalid_value")
            tools.by_name[tool["name"]] = (server, tool)
    return tools


def call_item(item_id: str, server: McpServer, name: str, arguments: str, result: CallResult | None,
              approval_request_id: str | None = None) -> dict:
    """An `mcp_call` item: in progress (no result yet), completed, or failed."""
    item: dict = {"type": "mcp_call", "id": item_id, "server_label": server.label, "name": name,
                  "arguments": arguments, "output": None, "error": None, "status": "in_progress"}
    if approval_request_id is not None:
        item["approval_request_id"] = approval_request_id
    if result is not None:
        item.update(output=result.output, error=result.error, status="failed" if result.error else "completed")
    return item


async def run_call(tools: McpTools, item: dict) -> dict:
    """The item's call made: the item with its output or error."""
    server, _ = tools.by_name.get(item["name"], (None, None))
    if server is None:  # listed no more, or no longer allowed
        return {**item, "error": {"type": "mcp_protocol_error", "code": -32601,
                                  "message": f"{item['name']!r} is not among the server's allowed tools"},
                "status": "failed"}
    try:
        arguments = parsed_arguments(item["arguments"])
    except ValueError as exc:
        result = CallResult(None, {"type": "mcp_tool_execution_error", "content": f"bad arguments: {exc}"})
    else:
        result = await call_tool(server, tools.session, item["name"], arguments)
    return call_item(item["id"], server, item["name"], item["arguments"], result, item.get("approval_request_id"))


async def answered_approvals(tools: McpTools, raw_input: Any, context: list[dict], base: str) -> list[dict]:
    """The turn's `mcp_approval_response` items, answered: each approved call made, each declined one
    an `mcp_call` that failed saying so. A 400 for a response to no request in the conversation."""
    if not isinstance(raw_input, list):
        return []
    requests = {item.get("id"): item for item in context if isinstance(item, dict)
                and item.get("type") == "mcp_approval_request"}
    done = {item.get("approval_request_id") for item in context if isinstance(item, dict)
            and item.get("type") == "mcp_call"}
    items = []
    for i, answer in enumerate(raw_input):
        if not isinstance(answer, dict) or answer.get("type") != "mcp_approval_response":
            continue
        where = f"input[{i}]"
        request_id, approve = answer.get("approval_request_id"), answer.get("approve")
        if not isinstance(approve, bool):
            raise bad_request(f"'{where}.approve' must be a boolean", f"{where}.approve", "invalid_type")
        request = requests.get(request_id)
        if request is None:
            raise bad_request(f"'{where}.approval_request_id' names no mcp_approval_request of this conversation",
                              f"{where}.approval_request_id", "invalid_value")
        if request_id in done:
            continue  # answered in an earlier turn
        item_id = f"mcp_{base}_a{i}"
        server = next((s for s in tools.servers if s.label == request.get("server_label")), None)
        if server is None:
            raise bad_request(f"'{where}' approves a call to {request.get('server_label')!r}, which 'tools' does "
                              "not offer", f"{where}.approval_request_id", "invalid_value")
        pending = call_item(item_id, server, request["name"], request.get("arguments") or "", None, request_id)
        if approve:
            items.append(await run_call(tools, pending))
        else:
            reason = answer.get("reason")
            declined = "the user declined this call" + (f": {reason}" if isinstance(reason, str) and reason else "")
            items.append(call_item(item_id, server, request["name"], pending["arguments"],
                                   CallResult(None, {"type": "mcp_tool_execution_error", "content": declined}),
                                   request_id))
    return items


@dataclass
class McpLoop:
    """A turn's tool loop: what it needs to call the model again, and what it has added so far."""

    tools: McpTools
    envelope: ResponseEnvelope
    chat: dict  # the turn's chat, as first sent
    request_id: str
    max_calls: int | None
    session_id: str | None = None
    serve: Serve | None = None  # set by the proxy once the request is admitted
    caller: Caller | None = None
    model: str | None = None  # the routed model: follow-up calls stay on it
    messages: list[dict] = field(default_factory=list)  # what the next call sends, once a step ran
    usage: dict[str, int] = field(default_factory=dict)  # the follow-up calls'
    steps: int = 0
    calls: int = 0

    def classify(self, item: dict, step: int, index: int) -> dict:
        """A call item of the model's answer as the Response shows it: a function call of the client's
        stays one; an MCP call becomes an approval request or an `mcp_call` to make."""
        if item["type"] != "function_call" or item["name"] not in self.tools.by_name:
            return item
        server, tool = self.tools.by_name[item["name"]]
        base = f"{self.envelope.id.removeprefix('resp_')}_{step}_{index}"
        if server.needs_approval(tool):
            return {"type": "mcp_approval_request", "id": f"mcpr_{base}", "server_label": server.label,
                    "name": item["name"], "arguments": item["arguments"]}
        return call_item(f"mcp_{base}", server, item["name"], item["arguments"], None)

    def goes_on(self, items: list[dict]) -> bool:
        """Does the step (its items, calls made) call the model again: it made MCP calls, and left nothing
        for the client to do (approve a call, run a function)?"""
        made = [i for i in items if i["type"] == "mcp_call"]
        waits = any(i["type"] in ("mcp_approval_request", "function_call", "custom_tool_call") for i in items)
        return bool(made) and not waits

    def _next_body(self, items: list[dict]) -> dict:
        """The next model call: the turn's chat with the step's items (its text, the calls and their
        results) added, on the routed model, under the turn's session."""
        self.steps += 1
        self.calls += sum(i["type"] == "mcp_call" for i in items)
        self.messages += input_messages([i for i in items if i["type"] != "mcp_approval_request"], "output")
        body = {k: v for k, v in self.chat.items() if k not in ("stream", "stream_options", "messages", "model")}
        body.update(model=self.model, messages=list(self.messages))
        if self.session_id is not None:
            body["session_id"] = self.session_id
        if self.steps >= MAX_STEPS - 1 or (self.max_calls is not None and self.calls >= self.max_calls):
            body["tool_choice"] = "none"  # no more calls: the model answers with what it has
        return body

    async def next_answer(self, items: list[dict]) -> dict:
        """The model called again after the step's items, whole."""
        assert self.serve is not None and self.caller is not None
        payload, _ = await served_chat(self.serve, self.caller, self._next_body(items), {"mcp_of": self.request_id},
                                       FAILURE)
        self._count(payload.get("usage"))
        return payload

    async def next_chunks(self, items: list[dict]) -> AsyncIterator[dict]:
        """The model called again after the step's items, streamed: its chunks as they come."""
        assert self.serve is not None and self.caller is not None
        async with aclosing(served_chunks(self.serve, self.caller, self._next_body(items),
                                          {"mcp_of": self.request_id}, FAILURE)) as chunks:
            async for chunk in chunks:
                self._count(chunk.get("usage"))
                yield chunk

    def _count(self, usage: Any) -> None:
        for key, value in (usage if isinstance(usage, dict) else {}).items():
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value

    def total_usage(self, usage: dict | None) -> dict | None:
        """The Response's usage: its own call's and the follow-ups'."""
        if not self.usage:
            return usage
        merged = dict(usage or {})
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            merged[key] = merged.get(key, 0) + self.usage.get(key, 0)
        return merged

    def connect(self, serve: Serve, caller: Caller, model: str, messages: list[dict]) -> None:
        """What follow-up calls need, once the turn is routed (after any compaction or truncation)."""
        self.serve, self.caller, self.model = serve, caller, model
        self.messages = list(messages)


async def begin_loop(servers: list[McpServer], envelope: ResponseEnvelope, chat: dict, raw: dict,
                     earlier: list[dict], request_id: str, session: McpSession) -> McpLoop:
    """A turn's MCP tools made ready before its model is called: listed (new `mcp_list_tools` items),
    the client's approvals answered (new `mcp_call` items, and their calls and results in the chat), and
    the tools offered to the model as functions. `session`: the connections they use."""
    limit = raw.get("max_tool_calls")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise bad_request("'max_tool_calls' must be a positive integer", "max_tool_calls", "invalid_value")
    for server in servers:  # a host the outbound policy refuses is a 400 before anything is listed or called
        session.check(server)
    own = raw["input"] if isinstance(raw.get("input"), list) else []
    context = [*earlier, *own]
    base = envelope.id.removeprefix("resp_")
    offered = {(t.get("function") or t.get("custom") or {}).get("name") for t in chat.get("tools") or ()}
    tools = await listed_tools(servers, context, base, {n for n in offered if isinstance(n, str)}, session)
    envelope.lead_items += tools.listed
    answered = await answered_approvals(tools, raw.get("input"), context, base)
    envelope.lead_items += answered
    chat["messages"] += input_messages(answered, "input") if answered else []
    if functions := tools.functions():
        chat["tools"] = [*(chat.get("tools") or []), *functions]
    return McpLoop(tools, envelope, chat, request_id, limit)


async def whole_response(loop: McpLoop, answer: dict, model: str) -> dict:
    """A whole answer's Response with the tool loop run: each model call's items in turn, the MCP calls
    made, until a call leaves nothing for the gateway to do."""
    envelope, usage = loop.envelope, answer.get("usage")
    output, step = list(envelope.lead_items), 0
    while True:
        choice = (answer.get("choices") or [{}])[0]
        items = [loop.classify(item, step, i) for i, item in enumerate(envelope.items_of(choice, step))]
        made = iter(await asyncio.gather(*(run_call(loop.tools, i) for i in items if i["type"] == "mcp_call")))
        items = [next(made) if i["type"] == "mcp_call" else i for i in items]
        output += items
        if not loop.goes_on(items):
            return envelope.response(answer.get("model") or model, "completed", output, loop.total_usage(usage),
                                     choice.get("finish_reason"))
        answer = await loop.next_answer(items)
        step += 1
