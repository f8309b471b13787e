"""Anthropic's Messages API (POST /v1/messages) on top of chat completions, for clients built on the
Anthropic SDKs (Claude Code and other agents): the request becomes the chat it stands for and goes through
all a chat does (routing, ranking, sessions, verification, the outcome row); the chat answer, whole or
streamed (gateway/messages_stream.py), becomes a Message again, and errors take Anthropic's shape.

`system`, text and image blocks, `tool_use` and `tool_result` blocks, custom tools and `tool_choice`,
`stop_sequences`, `metadata.user_id` (as OpenAI's `user`); `cache_control` on system, text, image,
tool_use and tool_result blocks and on tools, `thinking` and the thinking blocks an assistant turn sends back
(with their `signature`) become litellm's OpenAI-format fields for Anthropic (parts' and messages'
`cache_control`, `thinking`, `thinking_blocks`), sent on to Anthropic-bound deployments only
(gateway/anthropic_fields.py); an answer's thinking blocks come back with their signature. `top_k` and
`output_config` are ignored; `output_format` (structured outputs) becomes
`response_format`; server tools and documents are a 400. Claude Code's session (its
`x-claude-code-session-id` header, or the `session_id` inside its `metadata.user_id`) is the agent
session, unless the request names one itself."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from engine.server.errors import APIError, bad_request
from engine.server.json_out import SafeJSONResponse
from gateway.backends.answers import reasoning_of
from gateway.pricing import usage_of

_PASSED = ("model", "temperature", "top_p", "stream", "session_id", "priority", "pin_ttl_s", "cost_preference",
           "cache")
_READ = ("messages", "system", "max_tokens", "tools", "tool_choice", "stop_sequences", "metadata", "output_format",
         "thinking")
_IGNORED = ("top_k", "service_tier", "context_management", "output_config")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                 "content_filter": "refusal"}
# Anthropic's error `type` for each status the gateway answers with.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                529: "overloaded_error"}


_LEGACY_USER_ID = re.compile(r"^user_\w+_account_\w*_session_([0-9a-fA-F-]{8,64})$")
CLAUDE_CODE_SESSION_HEADER = "x-claude-code-session-id"


def claude_code_session(user_id: Any, header: str | None) -> str | None:
    """The session Claude Code names: its header (v2.1.86 on), else the `session_id` in `metadata.user_id`
    (a JSON string from v2.1.78, `user_<hash>_account_<id>_session_<uuid>` before)."""
    if header:
        return header
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            found = json.loads(user_id).get("session_id")
        except (ValueError, AttributeError):
            return None
        return found if isinstance(found, str) and found else None
    legacy = _LEGACY_USER_ID.match(user_id)
    return legacy.group(1) if legacy else None


def chat_request(raw: Any, headers: Mapping[str, str] | None = None) -> dict:
    """The chat request a Messages request (with its `headers`) stands for; a 400 naming the field for
    what it cannot be."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(raw) - {*_PASSED, *_READ, *_IGNORED})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    limit = raw.get("max_tokens")
    if type(limit) is not int or limit < 1:
        raise bad_request("'max_tokens' is required: a positive integer", "max_tokens", "invalid_value")
    chat = {name: raw[name] for name in _PASSED if raw.get(name) is not None}
    chat["max_tokens"] = limit
    messages = _system(raw.get("system"))
    turns = raw.get("messages")
    if not isinstance(turns, list) or not turns:
        raise bad_request("'messages' must be a non-empty list", "messages", "invalid_type")
    for i, turn in enumerate(turns):
        messages += _turn(turn, f"messages[{i}]")
    chat["messages"] = messages
    if raw.get("tools") is not None:
        chat["tools"] = _tools(raw["tools"])
    if (thinking := raw.get("thinking")) is not None:
        chat["thinking"] = _thinking(thinking)
    if raw.get("tool_choice") is not None:
        chat.update(_tool_choice(raw["tool_choice"]))
    if (stops := raw.get("stop_sequences")) is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("'stop_sequences' must be a list of strings", "stop_sequences", "invalid_type")
        chat["stop"] = stops
    if (output := raw.get("output_format")) is not None:  # structured outputs: a JSON schema the answer follows
        if not isinstance(output, dict) or output.get("type") != "json_schema" or not isinstance(output.get("schema"), dict):
            raise bad_request("'output_format' must be a json_schema format with a schema", "output_format",
                              "unsupported")
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": output["schema"]}}
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_request("'metadata' must be an object", "metadata", "invalid_type")
    user_id = (metadata or {}).get("user_id")
    if isinstance(user_id, str) and user_id:
        chat["user"] = user_id
    session = claude_code_session(user_id, (headers or {}).get(CLAUDE_CODE_SESSION_HEADER))
    if session is not None and "session_id" not in chat and 0 < len(session) <= 256:
        chat["session_id"] = session
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    return chat


def _thinking(thinking: Any) -> dict:
    """Extended thinking's settings, as litellm's `thinking` takes them (Anthropic's own shape)."""
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if kind not in _THINKING_TYPES or (kind == "enabled" and (type(budget) is not int or budget < 1)):
        raise bad_request("'thinking' must be {type: enabled, budget_tokens: a positive integer}, adaptive or "
                          "disabled", "thinking", "invalid_value")
    return thinking


def _cached(part: dict, block: dict) -> dict:
    """A chat part (or message, tool, tool call) with the block's prompt-cache breakpoint, where it has one."""
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _thinking_block(block: dict, at: str) -> dict:
    """A thinking block sent back, as litellm's `thinking_blocks` item (Anthropic checks its signature)."""
    if block["type"] == "redacted_thinking":
        if not isinstance(block.get("data"), str):
            raise bad_request(f"'{at}.data' must be a string", f"{at}.data", "invalid_type")
        return {"type": "redacted_thinking", "data": block["data"]}
    if not isinstance(block.get("thinking"), str) or not isinstance(block.get("signature", ""), str):
        raise bad_request(f"'{at}' must have a string 'thinking' and 'signature'", at, "invalid_type")
    return {"type": "thinking", "thinking": block["thinking"], "signature": block.get("signature", "")}


def _system(system: Any) -> list[dict]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                                        for b in system):
        if any("cache_control" in b for b in system):  # its breakpoints stay on their blocks
            return [{"role": "system", "content": [_cached({"type": "text", "text": b["text"]}, b) for b in system]}]
        return [{"role": "system", "content": "\n\n".join(b["text"] for b in system)}] if system else []
    raise bad_request("'system' must be a string or a list of text blocks", "system", "invalid_type")


def _turn(turn: Any, where: str) -> list[dict]:
    """One Messages turn as chat messages: an assistant's text and tool calls in one message; a user's
    tool results each as a `tool` message (first, as they answer the previous turn), then its text."""
    if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
        raise bad_request(f"'{where}' must be an object with role 'user' or 'assistant'", f"{where}.role")
    content = turn.get("content")
    if isinstance(content, str):
        return [{"role": turn["role"], "content": content}]
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or a list of blocks", f"{where}.content", "invalid_type")
    if turn["role"] == "assistant":
        return [_assistant(content, f"{where}.content")]
    results, parts = [], []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad_request(f"'{at}.tool_use_id' must be a string", f"{at}.tool_use_id", "invalid_type")
            text, images = _result(block.get("content"), f"{at}.content", block.get("is_error"))
            results.append(_cached({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, block))
            parts += images  # a chat tool message holds text only: its images follow as the user's
        elif kind == "text" and isinstance(block.get("text"), str):
            parts.append(_cached({"type": "text", "text": block["text"]}, block))
        elif kind == "image":
            parts.append(_cached({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), at)}}, block))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise bad_request(f"'{at}' must be a text, image or tool_result block", at, "unsupported")
    if not parts:
        return results
    text_only = all(p["type"] == "text" and "cache_control" not in p for p in parts)
    return [*results, {"role": "user", "content": "".join(p["text"] for p in parts) if text_only and len(parts) == 1
                       else parts}]


def _assistant(content: list, where: str) -> dict:
    text, calls, thinking = [], [], []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(_cached({"type": "text", "text": block["text"]}, block))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad_request(f"'{at}' must have a string 'id' and 'name'", at, "invalid_type")
            calls.append(_cached({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": json.dumps(block.get("input") or {})}}, block))
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(_thinking_block(block, at))
        else:
            raise bad_request(f"'{at}' must be a text or tool_use block", at, "unsupported")
    cached = any("cache_control" in part for part in text)
    message: dict = {"role": "assistant", "content": text if cached else "".join(p["text"] for p in text) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    return message


def _result(content: Any, where: str, is_error: Any) -> tuple[str, list[dict]]:
    """A tool result's text, and its images as chat image parts."""
    if content is None or isinstance(content, str):
        text, images = content or "", []
    elif isinstance(content, list):
        texts, images = [], []
        for i, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "image":
                images.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), f"{where}[{i}]")}})
            else:
                raise bad_request(f"'{where}[{i}]' must be a text or image block", f"{where}[{i}]", "unsupported")
        text = "".join(texts)
    else:
        raise bad_request(f"'{where}' must be a string or a list of text and image blocks", where, "unsupported")
    return (f"Error: {text}" if is_error is True else text), images


def _image_url(source: Any, where: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str):
        return f"data:{source['media_type']};base64,{source['data']}"
    if kind == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise bad_request(f"'{where}.source' must be a base64 or url image source", f"{where}.source", "unsupported")


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools", "invalid_type")
    converted = []
    for i, tool in enumerate(tools):
        if (not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or not isinstance(tool.get("name"), str)
                or not isinstance(tool.get("input_schema"), dict)):
            raise bad_request(f"'tools[{i}]' must be a custom tool with a name and an input_schema (server tools "
                              "are not supported)", f"tools[{i}]", "unsupported")
        function = {"name": tool["name"], "parameters": tool["input_schema"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict") is True:  # Anthropic's structured outputs: held as OpenAI's strict functions
            function["strict"] = True
        converted.append(_cached({"type": "function", "function": function}, tool))
    return converted


def _tool_choice(choice: Any) -> dict:
    kind = choice.get("type") if isinstance(choice, dict) else None
    chosen: dict[str, Any]
    if kind in ("auto", "none"):
        chosen = {"tool_choice": kind}
    elif kind == "any":
        chosen = {"tool_choice": "required"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chosen = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise bad_request("'tool_choice' must be auto, any, none or a tool by name", "tool_choice", "unsupported")
    if choice.get("disable_parallel_tool_use") is True:
        chosen["parallel_tool_calls"] = False
    return chosen


def message_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("req-")


def usage(chat_usage: dict | None) -> dict:
    """Anthropic's usage: input tokens neither read from the cache nor written to it, and those that were
    (gateway/pricing.py reads both from a chat usage)."""
    counted = usage_of(chat_usage)
    return {"input_tokens": counted.uncached, "cache_creation_input_tokens": counted.cache_creation,
            "cache_read_input_tokens": counted.cached, "output_tokens": counted.completion,
            "cache_creation": {"ephemeral_5m_input_tokens": counted.cache_creation - counted.cache_creation_1h,
                               "ephemeral_1h_input_tokens": counted.cache_creation_1h}}


def stop_reason(finish_reason: str | None, called: bool = False) -> str | None:
    """Anthropic's stop reason. An answer that called tools stopped for them: OpenAI finishes a call it
    forced by name with "stop", where Anthropic says "tool_use"."""
    if called and finish_reason == "stop":
        return "tool_use"
    return _STOP_REASONS.get(finish_reason or "", "end_turn") if finish_reason else None


def tool_input(arguments: str | None) -> dict:
    """A tool call's arguments as the object Anthropic's `input` is (an empty one when they are not)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def thinking_blocks(reply: dict) -> list[dict]:
    """A chat answer's thinking as Messages blocks: litellm's `thinking_blocks` from Anthropic, with their
    signature (and redacted ones' data), else a reasoning model's thinking (no signature: no Anthropic model's)."""
    blocks = []
    for block in reply.get("thinking_blocks") or ():
        if isinstance(block, dict) and block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
        elif isinstance(block, dict) and block.get("type") == "thinking":
            blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                           "signature": block.get("signature") or ""})
    if not blocks and (thinking := reasoning_of(reply)):
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
    return blocks


def message(request_id: str, answer: dict, model: str) -> dict:
    """A whole chat answer as a Message."""
    choice = (answer.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    content: list[dict] = []
    content += thinking_blocks(reply)
    if reply.get("content"):
        content.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{len(content)}",
                        "name": function.get("name") or "", "input": tool_input(function.get("arguments"))})
    return {"id": message_id(request_id), "type": "message", "role": "assistant", "model": answer.get("model") or model,
            "content": content, "stop_reason": stop_reason(choice.get("finish_reason") or "stop",
                                                           called=bool(reply.get("tool_calls"))),
            "stop_sequence": None, "usage": usage(answer.get("usage"))}


def count_chat(raw: Any) -> dict:
    """POST /v1/messages/count_tokens: the chat the request stands for, for its tokens to be counted
    (it has no `max_tokens`)."""
    if isinstance(raw, dict):
        raw = {"max_tokens": 1, **{k: v for k, v in raw.items() if k != "max_tokens"}}
    return chat_request(raw)


def error_body(error: APIError) -> dict:
    kind = _ERROR_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_response(error: APIError) -> JSONResponse:
    return SafeJSONResponse(error_body(error), status_code=error.status)
