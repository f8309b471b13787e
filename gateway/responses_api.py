"""OpenAI's Responses API (POST /v1/responses) on top of chat completions: the request becomes a chat
request, which then goes through all a chat does (routing, ranking, sessions, verification, the
outcome row), and the chat answer, whole or streamed, becomes a Response again.

A stored Response (gateway/stored_responses.py) is continued with `previous_response_id`: its chain's
input and output items come before the new input (its instructions do not, as at OpenAI); a
`conversation` (gateway/conversations.py) is continued with its items the same way. `prompt` (server-side
prompt templates) is a 400. Function and custom tools, and `file_search` and remote `mcp` tools, which the
gateway runs itself (gateway/file_search.py, gateway/mcp_loop.py); text and image input parts; `text.format` becomes `response_format`; a
`compaction` item stands for everything before it (gateway/compaction_items.py), and
`context_management` compacts a turn past its threshold first (gateway/compaction.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request
from gateway.backends.answers import reasoning_of
from gateway.compaction_items import compaction_rule, pruned
from gateway.file_search import citations, without_file_search
from gateway.mcp_tools import mcp_servers_of, without_mcp
from gateway.responses_input import (
    chat_response_format,
    chat_tool_choice,
    chat_tools,
    input_messages,
)

# Request fields read here; anything else is a 400, as it would be for a chat request it can't be.
_PASSED = ("model", "temperature", "top_p", "user", "metadata", "parallel_tool_calls", "stream", "prompt_cache_key",
           "service_tier", "session_id", "priority", "pin_ttl_s", "cost_preference", "cache")  # the last five: Pitstop's
_READ = ("input", "instructions", "tools", "tool_choice", "max_output_tokens", "text", "reasoning", "store",
         "previous_response_id", "conversation", "background", "truncation", "include", "top_logprobs",
         "context_management", "max_tool_calls")
_IGNORED = ("safety_identifier", "stream_options")
LOGPROBS = "message.output_text.logprobs"  # the `include` that asks for the output text's log-probabilities


def check_request(raw: Any) -> dict:
    """The body, if its fields are ones a Responses request may have: a 400 naming the field otherwise."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    if raw.get("prompt") is not None:
        raise bad_request("'prompt' is not supported: Pitstop keeps no prompt templates; send the prompt's text in "
                          "'instructions' and 'input'", "prompt", "unsupported")
    for name, kind in (("store", bool), ("background", bool), ("previous_response_id", str)):
        if raw.get(name) is not None and not isinstance(raw[name], kind):
            raise bad_request(f"'{name}' must be a {'boolean' if kind is bool else 'string'}", name, "invalid_type")
    if raw.get("truncation") not in (None, "auto", "disabled"):
        raise bad_request("'truncation' must be \"auto\" (drop the oldest turns to fit the model's context) or "
                          "\"disabled\"", "truncation", "invalid_value")
    if conversation_of(raw) is not None and raw.get("previous_response_id") is not None:
        raise bad_request("'conversation' and 'previous_response_id' cannot be used together: a response continues "
                          "one or the other", "conversation", "invalid_value")
    unknown = sorted(set(raw) - {*_PASSED, *_READ, *_IGNORED})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    compaction_rule(raw)
    return raw


def wants_logprobs(raw: dict) -> bool:
    """Does the request ask for the output text's log-probabilities (`include` them, or `top_logprobs`)?
    A 400 for a malformed ask."""
    include, top = raw.get("include"), raw.get("top_logprobs")
    if include is not None and (not isinstance(include, list) or not all(isinstance(i, str) for i in include)):
        raise bad_request("'include' must be a list of strings", "include", "invalid_type")
    if top is not None and (type(top) is not int or not 0 <= top <= 20):
        raise bad_request("'top_logprobs' must be an integer from 0 to 20", "top_logprobs", "invalid_value")
    return top is not None or LOGPROBS in (include or ())


def conversation_of(raw: dict) -> str | None:
    """The conversation a request names (`conversation` as an id or as `{"id": ...}`); a 400 otherwise."""
    conversation = raw.get("conversation")
    if conversation is None:
        return None
    if isinstance(conversation, dict) and set(conversation) == {"id"}:
        conversation = conversation["id"]
    if not isinstance(conversation, str) or not conversation:
        raise bad_request("'conversation' must be a conversation's id, or an object with its 'id'", "conversation",
                          "invalid_type")
    return conversation


def chat_request(raw: dict, input_required: bool = True) -> dict:
    """The chat request a checked Responses request stands for; a 400 naming the field for what it
    cannot be. Its messages are not yet pruned to its latest compaction: `continued` does that."""
    chat = {name: raw[name] for name in _PASSED if raw.get(name) is not None}
    messages = []
    instructions = raw.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("'instructions' must be a string", "instructions", "invalid_type")
        messages.append({"role": "system", "content": instructions})
    if input_required or raw.get("input") is not None:
        messages += input_messages(raw.get("input"))
    chat["messages"] = messages
    tools = without_mcp(without_file_search(raw.get("tools")))  # run by the gateway; MCP tools added once listed
    if tools:
        chat["tools"] = chat_tools(tools)
    choice = raw.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "file_search":
        if tools == raw.get("tools"):
            raise bad_request("'tool_choice' names file_search, which 'tools' does not offer", "tool_choice",
                              "invalid_value")
        choice = None  # the search is made before the model is called
    if isinstance(choice, dict) and choice.get("type") == "mcp":  # one of a server's tools, or any tool
        choice = {"type": "function", "name": choice["name"]} if isinstance(choice.get("name"), str) else "required"
    elif not tools and choice in ("auto", "required") and not mcp_servers_of(raw):
        choice = None
    if choice is not None:
        chat["tool_choice"] = chat_tool_choice(choice)
    if (limit := raw.get("max_output_tokens")) is not None:
        if type(limit) is not int or limit < 1:
            raise bad_request("'max_output_tokens' must be a positive integer", "max_output_tokens", "invalid_value")
        chat["max_tokens"] = limit
    if (response_format := chat_response_format(raw.get("text"))) is not None:
        chat["response_format"] = response_format
    if wants_logprobs(raw):
        chat["logprobs"] = True
        chat["top_logprobs"] = raw.get("top_logprobs") or 0
    effort = raw.get("reasoning", {}).get("effort") if isinstance(raw.get("reasoning"), dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
    if chat.get("stream"):
        chat["stream_options"] = {"include_usage": True}  # the completed event carries the usage
    return chat


def continued(chat: dict, raw: dict, earlier: Sequence[dict]) -> dict:
    """The chat, with the `earlier` items of the conversation it continues (none for a new one) after its
    instructions, pruned to its latest compaction (gateway/compaction_items.py)."""
    if earlier:  # a conversation may have no items yet
        at = 1 if raw.get("instructions") is not None else 0
        chat["messages"][at:at] = input_messages(list(earlier))
    chat["messages"] = pruned(chat["messages"])
    return chat


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req-")


def request_id_of(any_id: str) -> str:
    """The request id a Response's id names (feedback may quote either); other ids as they are."""
    return "req-" + any_id.removeprefix("resp_") if any_id.startswith("resp_") else any_id


def response_usage(usage: dict | None) -> dict | None:
    if not usage:
        return None
    details = usage.get("prompt_tokens_details") or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


class ResponseEnvelope:
    """What every Response of one request repeats: its id, creation time and the request's settings."""

    def __init__(self, request_id: str, raw: dict, store: bool = False) -> None:
        self.id = response_id(request_id)
        self.created_at = int(time.time())
        self.lead_items: list[dict] = []  # done before the model answers: a compaction, a file_search_call
        self.cited: list[tuple[str, str]] = []  # (file id, filename) its answer may cite
        tool_choice = raw.get("tool_choice")
        self.settings = {"instructions": raw.get("instructions"), "max_output_tokens": raw.get("max_output_tokens"),
                         "metadata": raw.get("metadata") or {},
                         "parallel_tool_calls": raw.get("parallel_tool_calls", True),
                         "temperature": raw.get("temperature"), "top_p": raw.get("top_p"),
                         "tool_choice": tool_choice if tool_choice is not None else "auto",
                         "tools": [_echoed(t) for t in tools] if isinstance(tools := raw.get("tools"), list)
                         else tools or [],
                         "text": raw.get("text") or {"format": {"type": "text"}},
                         "previous_response_id": raw.get("previous_response_id"), "store": store,
                         "conversation": {"id": conversation} if (conversation := conversation_of(raw)) else None,
                         "background": bool(raw.get("background")), "truncation": raw.get("truncation") or "disabled",
                         "error": None}

    def response(self, model: str, status: str, output: list[dict], usage: dict | None,
                 finish_reason: str | None = None) -> dict:
        incomplete = None
        if status == "completed" and finish_reason in ("length", "content_filter"):
            status = "incomplete"
            incomplete = {"reason": "max_output_tokens" if finish_reason == "length" else "content_filter"}
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "model": model, "output": output, "usage": response_usage(usage), "incomplete_details": incomplete,
                **self.settings}

    def step_id(self, step: int) -> str:
        """What the ids of a model call's items are made from: the Response's own for its first call,
        suffixed for the calls an MCP tool loop makes after it (gateway/mcp_loop.py)."""
        return self.id if step == 0 else f"{self.id}_{step}"

    def items_of(self, choice: dict, step: int = 0) -> list[dict]:
        """A whole chat choice's output items: its thinking, its text, its calls."""
        resp, message = self.step_id(step), choice.get("message") or {}
        items: list[dict] = []
        if reasoning := reasoning_of(message):
            items.append(reasoning_item(resp, reasoning, "completed"))
        if message.get("content"):
            items.append(message_item(resp, message["content"], "completed", logprobs_of(choice),
                                      citations(message["content"], self.cited)))
        items += [call_item(resp, i, call, "completed") for i, call in enumerate(message.get("tool_calls") or ())]
        return items

    def from_chat(self, answer: dict, model: str) -> dict:
        """A whole chat answer as a Response."""
        choice = (answer.get("choices") or [{}])[0]
        return self.response(answer.get("model") or model, "completed", [*self.lead_items, *self.items_of(choice)],
                             answer.get("usage"), choice.get("finish_reason"))


def _echoed(tool: Any) -> Any:
    """A tool as the Response repeats it (and keeps it): an MCP tool without its credentials."""
    if not isinstance(tool, dict) or tool.get("type") != "mcp":
        return tool
    echoed = {k: v for k, v in tool.items() if k != "authorization"}
    if isinstance(tool.get("headers"), dict):
        echoed["headers"] = dict.fromkeys(tool["headers"], "<redacted>")
    return echoed


def logprobs_of(choice: dict) -> list[dict]:
    """A chat choice's (or a chunk choice's) tokens' log-probabilities, [] where it has none."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return content if isinstance(content, list) else []


def reasoning_item(resp: str, text: str, status: str) -> dict:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"type": "reasoning", "id": "rs_" + resp.removeprefix("resp_"), "summary": [], "content": content,
            "status": status}


def message_item(resp: str, text: str, status: str, logprobs: list[dict] | None = None,
                 annotations: list[dict] | None = None) -> dict:
    """The answer's text as a `message` item; its tokens' log-probabilities where the chat gave them (the
    chat's `logprobs.content` entries are already Responses' shape: token, logprob, bytes, top_logprobs)."""
    content = [{"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": logprobs or []}] \
        if status == "completed" else []
    return {"type": "message", "id": "msg_" + resp.removeprefix("resp_"), "role": "assistant", "status": status,
            "content": content}


def call_item(resp: str, index: int, call: dict, status: str) -> dict:
    """A chat tool call as a Responses output item: a `function_call`, or a `custom_tool_call` (a chat
    custom call, `{"type": "custom", "custom": {"name", "input"}}`)."""
    base, call_id = resp.removeprefix("resp_"), call.get("id") or f"call_{index}"
    if call.get("type") == "custom":
        custom = call.get("custom") or {}
        return {"type": "custom_tool_call", "id": f"ctc_{base}_{index}", "call_id": call_id,
                "name": custom.get("name") or "", "input": custom.get("input") or "", "status": status}
    function = call.get("function") or {}
    name, arguments = function.get("name") or "", function.get("arguments") or ""
    return {"type": "function_call", "id": f"fc_{base}_{index}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def public_item(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith("_")}


def stored_items(items: Any, base: str) -> list[dict]:
    """Checked input items as they are kept: every item typed and with an id (`base` makes it unique:
    the response's id without its prefix, for a response's input)."""
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    kept = []
    for i, item in enumerate(items):
        item = {"type": "message", **item}
        item.setdefault("id", f"{_ID_PREFIXES.get(item['type'], 'item')}_{base}_{i}")
        kept.append(item)
    return kept


def listed_item(item: dict) -> dict:
    """A stored input item as `input_items` lists it: a message's text content as a part."""
    if item["type"] != "message" or not isinstance(item.get("content"), str):
        return item
    part = "output_text" if item.get("role") == "assistant" else "input_text"
    return {**item, "content": [{"type": part, "text": item["content"]}], "status": item.get("status", "completed")}


@dataclass(frozen=True)
class PageParams:
    limit: int
    descending: bool
    after: str | None


def page_params(query: Mapping[str, str], default_order: str = "desc") -> PageParams:
    """A list endpoint's cursor (`limit` 1-100, default 20; `order` asc or desc, by default
    `default_order`; `after`, an item id), or a 400 naming the parameter."""
    limit = query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise bad_request("'limit' must be an integer from 1 to 100", "limit", "invalid_value")
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'", "order", "invalid_value")
    return PageParams(int(limit), order == "desc", query.get("after"))


def no_item_after(after: str) -> Exception:
    return bad_request(f"'after': no item {after!r} here", "after", "invalid_value")


def page_body(items: Sequence[dict], has_more: bool) -> dict:
    """A page as the SDKs' cursor pages read it."""
    page = [listed_item(item) for item in items]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": has_more}


def item_page(items: Sequence[dict], query: Mapping[str, str]) -> dict:
    """One page of stored items held in memory (a response's input; a conversation's, while some of its
    items wait for the database)."""
    params = page_params(query)
    ordered = list(items)[::-1] if params.descending else list(items)
    start = 0
    if params.after is not None:
        ids = [item.get("id") for item in ordered]
        if params.after not in ids:
            raise no_item_after(params.after)
        start = ids.index(params.after) + 1
    page = ordered[start:start + params.limit]
    return page_body(page, start + len(page) < len(ordered))


_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
                "custom_tool_call": "ctc", "custom_tool_call_output": "ctco", "file_search_call": "fs",
                "compaction": "cmp", "mcp_list_tools": "mcpl", "mcp_call": "mcp", "mcp_approval_request": "mcpr",
                "mcp_approval_response": "mcpa"}
