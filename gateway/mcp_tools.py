"""The Responses API's remote MCP tools (`{"type": "mcp", "server_label", "server_url", ...}`), as a
request names them: checked, filtered (`allowed_tools`), offered to the model as functions, and
judged for approval (`require_approval`: "always" by default, as at OpenAI; "never"; or `always` /
`never` filters by tool name and read-only hint). The items they leave in a conversation
(`mcp_list_tools`, `mcp_call`, `mcp_approval_request`, `mcp_approval_response`) and what a chat model
reads of them. The gateway is the MCP client (gateway/mcp_client.py) and runs the tool loop
(gateway/mcp_loop.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request

_FIELDS = {"type", "server_label", "server_url", "headers", "authorization", "allowed_tools", "require_approval",
           "server_description"}
_UNSUPPORTED = ("connector_id", "tunnel_id", "defer_loading", "allowed_callers")
MCP_ITEMS = ("mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response")


@dataclass(frozen=True)
class ToolFilter:
    names: frozenset[str] | None  # None: any name
    read_only: bool | None  # None: either

    def matches(self, tool: dict) -> bool:
        hinted = bool((tool.get("annotations") or {}).get("readOnlyHint"))
        return (self.names is None or tool["name"] in self.names) and (self.read_only is None
                                                                       or hinted == self.read_only)


@dataclass(frozen=True)
class McpServer:
    label: str
    url: str
    headers: dict[str, str]
    allowed: ToolFilter | None  # None: every tool the server lists
    approval: str | tuple[ToolFilter | None, ToolFilter | None]  # "always", "never", or (always, never) filters
    description: str | None
    where: str  # the request's `tools[i]`
    transport: str = "streamable_http"  # or "sse" (the legacy HTTP+SSE transport): config's servers only

    def allows(self, tool: dict) -> bool:
        return self.allowed is None or self.allowed.matches(tool)

    def needs_approval(self, tool: dict) -> bool:
        """A tool's calls wait for the client's `mcp_approval_response` unless it is approved beforehand."""
        if isinstance(self.approval, str):
            return self.approval == "always"
        never = self.approval[1]  # a tool neither filter names waits, as under "always"
        return never is None or not never.matches(tool)


def _filter(raw: Any, where: str) -> ToolFilter | None:
    if raw is None:
        return None
    if isinstance(raw, list) and all(isinstance(n, str) for n in raw):
        return ToolFilter(frozenset(raw), None)
    if isinstance(raw, dict) and set(raw) <= {"tool_names", "read_only"}:
        names, read_only = raw.get("tool_names"), raw.get("read_only")
        if (names is None or isinstance(names, list) and all(isinstance(n, str) for n in names)) and \
                (read_only is None or isinstance(read_only, bool)):
            return ToolFilter(None if names is None else frozenset(names), read_only)
    raise bad_request(f"'{where}' must be a list of tool names or an object with 'tool_names' and 'read_only'",
                      where, "invalid_value")


def _approval(raw: Any, where: str) -> str | tuple[ToolFilter | None, ToolFilter | None]:
    if raw is None:
        return "always"
    if raw in ("always", "never"):
        return raw
    if isinstance(raw, dict) and raw and set(raw) <= {"always", "never"}:
        return _filter(raw.get("always"), f"{where}.always"), _filter(raw.get("never"), f"{where}.never")
    raise bad_request(f"'{where}' must be \"always\", \"never\" or an object with 'always' and 'never' filters",
                      where, "invalid_value")


def mcp_servers_of(raw: dict) -> list[McpServer]:
    """The request's MCP tools, checked: a 400 naming the field otherwise (unknown fields, labels twice)."""
    tools = raw.get("tools")
    if not isinstance(tools, list):
        return []
    servers: list[McpServer] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "mcp":
            continue
        where = f"tools[{i}]"
        for name in _UNSUPPORTED:
            if tool.get(name) is not None:
                raise bad_request(f"'{where}.{name}' is not supported: give the MCP server's 'server_url'",
                                  f"{where}.{name}", "unsupported")
        unknown = sorted(set(tool) - _FIELDS - set(_UNSUPPORTED))
        if unknown:
            raise bad_request(f"unknown field {unknown[0]!r}", f"{where}.{unknown[0]}", "unknown_field")
        label, url = tool.get("server_label"), tool.get("server_url")
        if not isinstance(label, str) or not label:
            raise bad_request(f"'{where}.server_label' must name the server", f"{where}.server_label", "invalid_value")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise bad_request(f"'{where}.server_url' must be the MCP server's http(s) URL", f"{where}.server_url",
                              "invalid_value")
        if any(s.label == label for s in servers):
            raise bad_request(f"two MCP tools are labelled {label!r}", f"{where}.server_label", "invalid_value")
        headers = tool.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in headers.items()):
            raise bad_request(f"'{where}.headers' must map header names to strings", f"{where}.headers",
                              "invalid_value")
        if (token := tool.get("authorization")) is not None:
            if not isinstance(token, str):
                raise bad_request(f"'{where}.authorization' must be a string", f"{where}.authorization",
                                  "invalid_type")
            headers = {**headers, "Authorization": f"Bearer {token}"}
        description = tool.get("server_description")
        if description is not None and not isinstance(description, str):
            raise bad_request(f"'{where}.server_description' must be a string", f"{where}.server_description",
                              "invalid_type")
        servers.append(McpServer(label, url, headers, _filter(tool.get("allowed_tools"), f"{where}.allowed_tools"),
                                 _approval(tool.get("require_approval"), f"{where}.require_approval"),
                                 description, where))
    return servers


def without_mcp(tools: Any) -> Any:
    """The request's tools but its MCP ones, whose functions the gateway adds once listed."""
    if not isinstance(tools, list):
        return tools
    return [t for t in tools if not (isinstance(t, dict) and t.get("type") == "mcp")]


def as_function(server: McpServer, tool: dict) -> dict:
    """An MCP tool as the chat function the model is offered."""
    description = tool.get("description") or ""
    if server.description:
        description = f"{description}\n\n(From {server.label}: {server.description})".strip()
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def call_messages(item: dict) -> list[dict]:
    """What a chat model reads of an `mcp_call` item: its call, then its output (or its error)."""
    call = {"id": item["id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
    error = item.get("error")
    result = item.get("output") if error is None else f"error: {error_text(error)}"
    return [{"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": item["id"], "content": result or ""}]


def error_text(error: Any) -> str:
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            return error["message"]
        content = error.get("content")
        return content if isinstance(content, str) else json.dumps(content)
    return str(error)


def parsed_arguments(arguments: str) -> dict:
    """A call's arguments as the object MCP sends ({} for none); a ValueError for anything else."""
    value = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("the arguments are not a JSON object")
    return value
