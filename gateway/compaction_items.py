"""Compaction items of the Responses API, as Pitstop writes and reads them: what a compaction pass
(gateway/compaction.py) leaves in a conversation in place of everything before it.

An item is `{"type": "compaction", "id", "encrypted_content"}`, as OpenAI's. Its content is opaque to
clients by contract, and self-contained, so it works with `store: false` and on any replica: the user's
latest messages word for word (as many as fit a budget, the last always), the summary the model wrote,
and the unanswered tool calls with their results that the conversation ended on (the model needs those
word for word to go on), as JSON, compressed and base64url-encoded behind a version prefix. It is not
encrypted: it holds nothing the client did not already send or receive.

Read back, an item is those user messages, then the summary (a user message with a fixed lead), then
the tail; everything before the latest item in a turn's conversation but its system and developer
messages goes, since the item stands for it. So a client may send the compacted window (the kept user
messages, then the item), or everything it had with the item appended, or only the item: the model
sees the same context, and a chain compacted once keeps its prefix from turn to turn."""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from typing import Any

from engine.server.errors import bad_request

PREFIX = "pitstop-compaction-1."
MAX_CONTENT_BYTES = 64 * 1024 * 1024  # decompressed: a bound on what one item may expand to
SUMMARY_LEAD = ("Summary of the conversation so far, written when its context was compacted: the user's latest "
                "messages above are kept as they were, and everything else up to here is summarised below.\n\n")
_START = "_compaction"  # on an item's first message until the conversation is pruned (gateway/responses_api.py)
_KEPT_ROLES = ("system", "developer")
_TAIL_ROLES = ("assistant", "tool")


@dataclass(frozen=True)
class Compaction:
    users: list[Any]  # the user messages kept, oldest first: their chat content (a string, or parts)
    summary: str
    tail: list[dict]  # chat messages: the calls a conversation ended on, then their results
    model: str  # the model that wrote the summary

    def encode(self) -> str:
        payload = json.dumps({"users": self.users, "summary": self.summary, "tail": self.tail, "model": self.model},
                             ensure_ascii=False, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(zlib.compress(payload, 6)).decode().rstrip("=")

    def messages(self) -> list[dict]:
        """The chat messages the item stands for, the first marked for pruning: the kept user messages,
        the summary, the tail."""
        messages = [*({"role": "user", "content": content} for content in self.users),
                    {"role": "user", "content": SUMMARY_LEAD + self.summary}, *self.tail]
        messages[0] = {**messages[0], _START: True}
        return messages


def is_summary(message: dict) -> bool:
    """Is this chat message a compaction's summary (known by its lead, so it stays known once sent)?"""
    content = message.get("content")
    return message.get("role") == "user" and isinstance(content, str) and content.startswith(SUMMARY_LEAD)


def kept_users(messages: list[dict], budget_tokens: int) -> list[Any]:
    """The contents of the latest user messages (not summaries) whose text fits `budget_tokens` (about
    four characters a token), oldest first; the last one always."""
    kept: list[Any] = []
    for message in reversed(messages):
        if message.get("role") != "user" or is_summary(message):
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else "".join(
            p.get("text", "") for p in content or () if isinstance(p, dict))
        budget_tokens -= len(text) // 4 + 1
        if kept and budget_tokens < 0:
            break
        kept.append(content)
    return kept[::-1]


def decode(content: Any, where: str) -> Compaction:
    """The compaction an item's `encrypted_content` holds; a 400 naming the field for anything this
    gateway did not write (another provider's item, or one cut or edited)."""
    field = f"{where}.encrypted_content"

    def refused(why: str) -> Exception:
        return bad_request(f"'{field}' is not a compaction this gateway wrote ({why}); compaction items are "
                           "made by Pitstop's /v1/responses/compact or context_management, and sent back as "
                           "they came", field, "invalid_value")

    if not isinstance(content, str):
        raise refused("not a string")
    if not content.startswith(PREFIX):
        raise refused("unknown format")
    encoded = content[len(PREFIX):]
    try:
        packed = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_CONTENT_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise refused("cut short, or too large")
        data = json.loads(raw)
    except (ValueError, zlib.error):
        raise refused("damaged") from None
    users, summary, tail, model = (data.get(k) for k in ("users", "summary", "tail", "model")) \
        if isinstance(data, dict) else (None, None, None, None)
    if not isinstance(users, list) or not all(isinstance(u, str | list) for u in users) \
            or not isinstance(summary, str) or not isinstance(model, str) or not isinstance(tail, list) \
            or not all(isinstance(m, dict) and m.get("role") in _TAIL_ROLES for m in tail):
        raise refused("damaged")
    return Compaction(users, summary, tail, model)


def item(item_id: str, compaction: Compaction) -> dict:
    return {"type": "compaction", "id": item_id, "encrypted_content": compaction.encode()}


def pruned(messages: list[dict]) -> list[dict]:
    """The chat messages a conversation stands for: from its latest compaction item on, after the system
    and developer messages before it; the items' marks gone."""
    latest = max((i for i, m in enumerate(messages) if m.get(_START)), default=None)
    if latest is None:
        return messages
    kept = [m for m in messages[:latest] if m.get("role") in _KEPT_ROLES]
    after = [{k: v for k, v in m.items() if k != _START} if m.get(_START) else m for m in messages[latest:]]
    return [*kept, *after]


def unanswered(messages: list[dict]) -> list[dict]:
    """The tool results a conversation ends on, after the calls that asked for them (a result needs its
    call before it); [] where it ends otherwise."""
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    if start == len(messages) or start == 0:
        return []
    caller = messages[start - 1]
    if caller.get("role") != "assistant" or not caller.get("tool_calls"):
        return []
    # Its text, if any, went into the summary; its calls stay, for the results to answer.
    return [{"role": "assistant", "content": None, "tool_calls": caller["tool_calls"]}, *messages[start:]]


def compacted(messages: list[dict], compaction: Compaction) -> list[dict]:
    """The conversation `messages` after a compaction of them: its system and developer messages, then
    the compaction's."""
    return pruned([*messages, *compaction.messages()])


@dataclass(frozen=True)
class CompactionRule:
    """A Responses request's `context_management: [{"type": "compaction", "compact_threshold": N}]`."""

    threshold: int | None  # prompt tokens past which the turn is compacted first (None: a share of the window)


def compaction_rule(raw: dict) -> CompactionRule | None:
    """The request's compaction rule, or None; a 400 naming the field for a malformed one."""
    entries = raw.get("context_management")
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise bad_request("'context_management' must be a list of entries", "context_management", "invalid_type")
    rule = None
    for i, entry in enumerate(entries):
        where = f"context_management[{i}]"
        if not isinstance(entry, dict) or entry.get("type") != "compaction":
            raise bad_request(f"'{where}.type' must be \"compaction\" (the only strategy)", f"{where}.type",
                              "invalid_value")
        unknown = sorted(set(entry) - {"type", "compact_threshold"})
        if unknown:
            raise bad_request(f"unknown field {unknown[0]!r}", f"{where}.{unknown[0]}", "unknown_field")
        threshold = entry.get("compact_threshold")
        if threshold is not None and (type(threshold) is not int or threshold < 1):
            raise bad_request(f"'{where}.compact_threshold' must be a positive integer (prompt tokens)",
                              f"{where}.compact_threshold", "invalid_value")
        if rule is not None:
            raise bad_request("at most one compaction entry", where, "invalid_value")
        rule = CompactionRule(threshold)
    return rule
