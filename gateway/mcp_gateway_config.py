"""The `mcp_servers:` section: the MCP servers the gateway's own MCP endpoint (`/mcp`, gateway/mcp_gateway.py)
aggregates for the team, each reached over Streamable HTTP with the credentials given here (`os.environ/NAME`
values are read from the environment, as everywhere in the config but `model_list`).

    mcp_servers:
      - name: github                  # its tools are `github__<tool>` on /mcp, and itself alone at /mcp/github
        url: https://api.githubcopilot.com/mcp/
        authorization: os.environ/GITHUB_TOKEN   # sent as `Authorization: Bearer <token>`
        headers: {X-Team: platform}   # more headers sent with every request to it
        allowed_tools: [create_issue, get_issue]  # only these are offered (absent: all it lists)
        disallowed_tools: [delete_repo]           # never offered, whatever allowed_tools says
        description: The team's GitHub

The servers are the operator's, not URLs clients hand in: the `outbound:` host rules do not apply to them,
its `proxy` does. The section is read again by a config reload (gateway/config_reload.py)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from gateway.mcp_tools import McpServer, ToolFilter
from gateway.strict_config import StrictConfig

SEPARATOR = "__"  # between a server's name and its tool's on /mcp: `github__create_issue`
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class McpServerConfig(StrictConfig):
    name: str
    url: str
    transport: Literal["streamable_http", "sse"] = "streamable_http"  # sse: the legacy HTTP+SSE (its /sse URL)
    headers: dict[str, str] = Field(default_factory=dict)
    authorization: str | None = None  # a bearer token: `Authorization: Bearer <it>`
    allowed_tools: list[str] | None = None  # None: every tool the server lists
    disallowed_tools: list[str] = Field(default_factory=list)
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _a_name(cls, name: str) -> str:
        if not _NAME.match(name) or SEPARATOR in name or name.endswith("_"):
            raise ValueError(f"{name!r}: a server's name is letters, digits, '-' and single '_' (it prefixes its "
                             f"tools' names with {SEPARATOR!r}, so it may not hold {SEPARATOR!r} or end in '_')")
        return name

    @field_validator("url")
    @classmethod
    def _an_http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL (the server's Streamable HTTP endpoint)")
        return url

    def offers(self, tool: str) -> bool:
        """Whether /mcp lists and calls `tool` of this server (before any API key's restriction)."""
        return (self.allowed_tools is None or tool in self.allowed_tools) and tool not in self.disallowed_tools

    def upstream(self) -> McpServer:
        """The server as gateway/mcp_client.py reaches it (the Responses API's remote MCP tools' machinery)."""
        headers = dict(self.headers)
        if self.authorization is not None:
            headers["Authorization"] = f"Bearer {self.authorization}"
        allowed = ToolFilter(frozenset(self.allowed_tools), None) if self.allowed_tools is not None else None
        return McpServer(self.name, self.url, headers, allowed, "never", self.description, f"mcp_servers.{self.name}",
                         self.transport)


def _unique_names(servers: list[McpServerConfig]) -> list[McpServerConfig]:
    names = [s.name for s in servers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two MCP servers are named {twice[0]!r}")
    return servers


McpServerList = Annotated[list[McpServerConfig], AfterValidator(_unique_names)]
