"""Anthropic's own fields in a chat body, as litellm's OpenAI-format input carries them for its `anthropic/`
provider: `cache_control` (prompt-cache breakpoints) on a content part, a message, a tool call or a tool,
and at the top; `thinking` (extended thinking's settings); an assistant message's `thinking_blocks` (its
thinking sent back with their `signature`). They reach Claude deployments as they are
(`Backend.anthropic_fields`, `takes_anthropic_fields`); every other deployment gets the body without them:
an OpenAI-compatible server would refuse them or read them as something else. The Messages API (gateway/messages_api.py) and
chat-completions clients write them alike; gateway/dispatch.py's `as_sent` applies this, once per call."""

from __future__ import annotations

from typing import Any

_TOP = ("thinking", "cache_control")
# Hosts of Claude besides Anthropic's API whose litellm provider translates these fields: Bedrock's Converse
# (`cache_control` becomes a `cachePoint`, which litellm sends only to models that take one; `thinking` goes
# in `additionalModelRequestFields`; thinking blocks become `reasoningContent` with their signature) and Vertex
# AI (Anthropic's own format). Their other models (Nova, Llama, Gemini) get the fields taken out.
_CLAUDE_HOSTS = ("bedrock", "vertex_ai")


def takes_anthropic_fields(model: str) -> bool:
    """Whether a litellm model string (`provider/model`) reaches Claude through a provider that takes them."""
    provider, _, name = model.partition("/")
    return provider == "anthropic" or (provider in _CLAUDE_HOSTS and "claude" in name.lower())
_MESSAGE = ("cache_control", "thinking_blocks")


def _without(item: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(item, dict) and any(key in item for key in keys):
        return {k: v for k, v in item.items() if k not in keys}
    return item


def _tool(tool: Any) -> Any:
    tool = _without(tool, ("cache_control",))
    function = tool.get("function") if isinstance(tool, dict) else None
    if isinstance(function, dict) and "cache_control" in function:
        tool = {**tool, "function": _without(function, ("cache_control",))}
    return tool


def _message(message: Any) -> Any:
    message = _without(message, _MESSAGE)
    if not isinstance(message, dict):
        return message
    content, calls = message.get("content"), message.get("tool_calls")
    if isinstance(content, list) and any(isinstance(p, dict) and "cache_control" in p for p in content):
        message = {**message, "content": [_without(p, ("cache_control",)) for p in content]}
    if isinstance(calls, list) and any(isinstance(c, dict) and "cache_control" in c for c in calls):
        message = {**message, "tool_calls": [_without(c, ("cache_control",)) for c in calls]}
    return message


def _marked(items: Any) -> bool:
    """Whether a list (of content parts, tool calls) holds a `cache_control`."""
    return isinstance(items, list) and any(isinstance(item, dict) and "cache_control" in item for item in items)


def _has_fields(message: Any) -> bool:
    return isinstance(message, dict) and ("cache_control" in message or "thinking_blocks" in message
                                          or _marked(message.get("content")) or _marked(message.get("tool_calls")))


def _tool_has_fields(tool: Any) -> bool:
    return isinstance(tool, dict) and ("cache_control" in tool or (isinstance(tool.get("function"), dict)
                                                                   and "cache_control" in tool["function"]))


def without_anthropic_fields(body: dict) -> dict:
    """`body` without Anthropic's fields: the same object where it has none (the usual case: a walk of the
    messages that copies nothing), else a copy; the client's body is never changed (a retry may go to an
    Anthropic deployment)."""
    messages, tools = body.get("messages"), body.get("tools")
    messages = messages if isinstance(messages, list) else []
    tools = tools if isinstance(tools, list) else []
    marked_messages = any(_has_fields(m) for m in messages)
    marked_tools = any(_tool_has_fields(t) for t in tools)
    if not marked_messages and not marked_tools and not any(key in body for key in _TOP):
        return body
    stripped = {k: v for k, v in body.items() if k not in _TOP}
    if marked_messages:
        stripped["messages"] = [_message(m) for m in messages]
    if marked_tools:
        stripped["tools"] = [_tool(t) for t in tools]
    return stripped
