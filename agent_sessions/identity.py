"""Which program a request belongs to and where it stands, read from the request itself.

Session id: the `x-session-id` header, else `session_id` in the body or `metadata.session_id`
(gateway/request_body.py reads those), else the OpenAI `user` field. The agent name (for per-agent
tool durations) is `metadata.agent` when given. A request is a returning turn when its messages end
with tool results answering the previous assistant message's `tool_calls`: that is how every agent
framework sends tool output back, so tool names come from what the client sends."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

USER_PREFIX = "user:"
MAX_SESSION_ID_CHARS = 256  # what engines take (engine/server/protocol.py)
_KEYED = re.compile(r"[0-9a-f]{32}:")  # an API key's id (storage/models/base.py new_id) and the separator


def session_id_of(session_id: str | None, body: dict) -> str | None:
    if session_id is not None:
        return session_id
    user = body.get("user")
    if isinstance(user, str) and 0 < len(user) <= 200:
        return USER_PREFIX + user  # a namespace of its own: never collides with explicit ids
    return None


def scoped_session_id(session_id: str, key_id: str | None) -> str:
    """The session's id inside Pitstop: sessions belong to the API key that made them, so two teams'
    `agent-1` (or two `user` fields alike) are two sessions, and one key cannot read another's turns
    and tools, move its pins or borrow its program's priority. Callers without a key (the master key,
    or keys not required) share one namespace, with their ids as sent."""
    if key_id is None:
        return "~" + session_id if _KEYED.match(session_id) else session_id  # never a key's namespace
    scoped = f"{key_id}:{session_id}"
    if len(scoped) <= MAX_SESSION_ID_CHARS:
        return scoped
    return f"{key_id}:sha256:{hashlib.sha256(session_id.encode('utf-8', 'surrogatepass')).hexdigest()}"


def agent_of(body: dict) -> str | None:
    metadata = body.get("metadata")
    agent = metadata.get("agent") if isinstance(metadata, dict) else None
    return agent if isinstance(agent, str) and 0 < len(agent) <= 128 else None


def tool_names(calls: Any) -> list[str]:
    names = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            names.append(name[:128])
    return names


@dataclass(frozen=True)
class TurnShape:
    returning: bool  # the messages end with tool results for the last assistant's tool calls
    tools_answered: list[str]  # names of the tool calls those results answer
    declares_tools: bool  # the request offers tools: the model may call one


def turn_shape(body: dict) -> TurnShape:
    messages = body.get("messages")
    declares = bool(body.get("tools") or body.get("functions"))
    if not isinstance(messages, list):
        return TurnShape(False, [], declares)
    i = len(messages)
    while i > 0 and isinstance(messages[i - 1], dict) and messages[i - 1].get("role") in ("tool", "function"):
        i -= 1
    if i == len(messages) or i == 0:
        return TurnShape(False, [], declares)
    assistant = messages[i - 1]
    if not isinstance(assistant, dict) or assistant.get("role") != "assistant":
        return TurnShape(False, [], declares)
    names = tool_names(assistant.get("tool_calls"))
    if not names and isinstance(assistant.get("function_call"), dict):
        names = tool_names([{"function": assistant["function_call"]}])
    return TurnShape(bool(names), names, declares)
