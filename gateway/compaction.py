"""Compaction for long-running agents, as OpenAI's Responses API offers it, for every model behind the
gateway: `POST /v1/responses/compact` (a conversation in, its user messages and one compaction item
out), and server-side compaction (`context_management: [{"type": "compaction", "compact_threshold":
N}]` on a Responses turn: past N prompt tokens the turn is compacted before the model is called, and
its output opens with the compaction item).

A compaction pass is one chat request served as any other (routed, limited, billed to the key, with
its own outcome row naming the turn it served): the conversation as the model would see it, its tools
offered but declined, then an instruction to write a handoff summary. Sent to the turn's own model by
default, it is the conversation the model's engine last computed plus one message, so that engine's
prefix cache serves most of its prompt where it lands on the same instance; `responses.compaction_model`
sends it to a cheaper model instead. What the summary replaces, and how the item is read back:
gateway/compaction_items.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from engine.server.errors import APIError, bad_request
from gateway.auth import Caller
from gateway.compaction_items import Compaction, compacted, item, kept_users, unanswered
from gateway.outcomes import new_request_id
from gateway.responses_api import response_usage
from gateway.served import Serve, served_chat
from gateway.token_count import count_on_model
from gateway.truncation import fit_context, model_window

if TYPE_CHECKING:  # gateway.state builds what imports this module
    from gateway.outcomes import OutcomeDraft
    from gateway.state import GatewayState
    from gateway.stored_responses import ResponsesTurn

log = logging.getLogger("pitstop.gateway")

DEFAULT_THRESHOLD_SHARE = 0.8  # no compact_threshold: compact past this share of the model's context window
SUMMARY_SHARE = 4  # a summary takes at most a quarter of its model's context window
COMPACT_PROMPT = (
    "Your context is about to be compacted: the user's own messages will be kept word for word, and "
    "everything else in this conversation (your answers, your tool calls and their results) will be "
    "replaced by what you write now. Write a handoff summary that lets you carry on without them: the "
    "goal and its constraints; what has been done and found, with the exact names, paths, commands, "
    "values and errors that matter; the decisions made and why; and what remains to be done next. Write "
    "only the summary.")
_COMPACT_FIELDS = {"model", "input", "instructions", "previous_response_id", "prompt_cache_key",
                   "prompt_cache_retention", "prompt_cache_options", "safety_identifier", "service_tier", "image"}


@dataclass(frozen=True)
class CompactionPass:
    compaction: Compaction
    usage: dict | None  # the summary call's
    headers: dict[str, str]  # the summary call's own (its request id, model, limits)

    @property
    def request_id(self) -> str | None:  # the summary call's outcome row
        return self.headers.get("x-pitstop-request-id")


def summary_request(chat: dict, model: str, max_tokens: int) -> dict:
    """The chat that asks `model` to summarise the conversation `chat` sends: the same messages and tools
    (so the prefix is the one already computed), the tools declined, the instruction last."""
    body: dict[str, Any] = {"model": model, "messages": [*chat["messages"], {"role": "user", "content": COMPACT_PROMPT}],
                            "max_tokens": max_tokens}
    if chat.get("tools"):
        body["tools"], body["tool_choice"] = chat["tools"], "none"
    return body


async def summarise(state: GatewayState, serve: Serve, caller: Caller, chat: dict, model: str, users_budget: int,
                    origin: dict) -> CompactionPass:
    """One compaction pass over the conversation `chat` sends, by `model`, keeping the latest user
    messages that fit `users_budget` tokens; the pass's error (its status and message) where it fails.
    `origin` goes to the pass's outcome row."""
    limit = state.settings.responses.compaction_max_tokens
    if (window := await model_window(state, model)) is not None:
        limit = min(limit, max(1, window // SUMMARY_SHARE))  # a summary near the window's size would compact nothing
    body = summary_request(chat, model, limit)
    await fit_context(state, model, body, stable=False)  # a conversation past the summariser's window: its middle
    # The gateway chose the summariser: the key pays for it, whichever models it may use itself.
    payload, headers = await served_chat(serve, replace(caller, models=None), body, origin,
                                         f"the compaction pass on {model!r} failed", "compaction_failed")
    choice = (payload.get("choices") or [{}])[0]
    summary = ((choice.get("message") or {}).get("content") or "").strip()
    if not summary:
        raise APIError(502, f"the compaction pass on {model!r} wrote no summary", code="compaction_failed")
    compaction = Compaction(kept_users(chat["messages"], users_budget), summary, unanswered(chat["messages"]),
                            payload.get("model") or model)
    return CompactionPass(compaction, payload.get("usage"), headers)


async def compact_turn(state: GatewayState, serve: Serve, draft: OutcomeDraft, turn: ResponsesTurn) -> None:
    """Server-side compaction: where the routed turn's prompt is past its threshold, replace it with its
    compaction before the model is called, and open the Response with the compaction item. A pass that
    fails leaves the turn as it was (the outcome row says why): the turn may still fit."""
    assert turn.compaction is not None and draft.request is not None and draft.route is not None \
        and draft.caller is not None
    model, parsed = draft.route.model_name, draft.request
    threshold = turn.compaction.threshold
    if threshold is None:
        window = await model_window(state, model)
        if window is None:
            return
        threshold = int(window * DEFAULT_THRESHOLD_SHARE)
    counted = await count_on_model(state, model, parsed.body)
    if counted.tokens <= threshold:
        return
    summariser = state.settings.responses.compaction_model or model
    try:
        done = await summarise(state, serve, draft.caller, parsed.body, summariser,
                               min(state.settings.responses.compaction_user_tokens, threshold // 4),
                               {"compaction_of": draft.request_id})
    except APIError as exc:
        log.warning("request %s: compaction pass failed, served as it was: %s", draft.request_id, exc.message)
        draft.extra["compaction"] = {"failed": exc.message, "prompt_tokens": counted.tokens, "threshold": threshold}
        return
    before = len(parsed.body["messages"])
    parsed.body["messages"] = compacted(parsed.body["messages"], done.compaction)
    parsed.measure_messages()
    turn.envelope.lead_items.insert(0, item("cmp_" + turn.envelope.id.removeprefix("resp_"), done.compaction))
    draft.extra["compaction"] = {"replaced_messages": before - len(parsed.body["messages"]) + 1,  # the summary's
                                 "prompt_tokens": counted.tokens, "threshold": threshold, "summariser": summariser,
                                 "pass_request_id": done.request_id}


def check_compact_request(raw: Any) -> dict:
    """A /v1/responses/compact body, checked: a 400 naming the field otherwise."""
    if not isinstance(raw, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(raw) - _COMPACT_FIELDS)
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")
    if not isinstance(raw.get("model"), str) or not raw["model"]:
        raise bad_request("'model' is required: the model whose conversation this is", "model", "missing_required")
    if raw.get("input") is None and raw.get("previous_response_id") is None:
        raise bad_request("give the conversation to compact: 'input', 'previous_response_id', or both", "input",
                          "missing_required")
    return raw


async def compact_conversation(state: GatewayState, serve: Serve, caller: Caller, raw: Any) -> tuple[dict, dict]:
    """POST /v1/responses/compact: the compacted window (the conversation's latest user messages, then one
    compaction item) as a `response.compaction` object, and its headers: the pass's, whose request it is."""
    raw = check_compact_request(raw)
    caller.check_model(raw["model"])
    asked = {k: raw[k] for k in ("model", "input", "instructions", "previous_response_id") if raw.get(k) is not None}
    chat = await state.responses.input_chat(asked, caller.key_id, input_required=False)
    if not any(m["role"] != "system" for m in chat["messages"]):
        raise bad_request("there is nothing to compact: the conversation has no items", "input", "invalid_value")
    summariser = state.settings.responses.compaction_model or raw["model"]
    budget = state.settings.responses.compaction_user_tokens
    if (window := await model_window(state, raw["model"])) is not None:
        budget = min(budget, window // 4)
    done = await summarise(state, serve, caller, chat, summariser, budget, {"compaction_of": "compact"})
    base = (done.request_id or new_request_id()).removeprefix("req-")
    output = [user_item(f"msg_{base}_{i}", content) for i, content in enumerate(done.compaction.users)]
    output.append(item(f"cmp_{base}", done.compaction))
    return ({"id": f"resp_{base}", "object": "response.compaction", "created_at": int(time.time()), "output": output,
             "usage": response_usage(done.usage)}, done.headers)


def user_item(item_id: str, content: str | list[dict]) -> dict:
    """A user message of the conversation as an item: its text and image parts as Responses parts."""
    if isinstance(content, str):
        parts = [{"type": "input_text", "text": content}]
    else:
        parts = [{"type": "input_text", "text": p["text"]} if p.get("type") == "text" else
                 {"type": "input_image", "image_url": p["image_url"]["url"], "detail": p["image_url"].get("detail",
                                                                                                          "auto")}
                 for p in content]
    return {"type": "message", "id": item_id, "role": "user", "status": "completed", "content": parts}
