"""OpenAI's Conversations API: a conversation holds items (messages, function calls and their outputs)
that a Responses request naming it (`conversation`) is served after, and that its own input and output
are added to once it completes; `/v1/conversations` creates, reads, updates and deletes them and their
items (gateway/conversation_endpoints.py).

A conversation is one agent session (agent_sessions/) from its first turn, named by its id unless the
request names one, so an agent built on conversations (the OpenAI Agents SDK's
`OpenAIConversationsSession`, or `conversation_id=` on its runner) gets instance affinity and KV pins
without a header. Conversations belong to the API key that made them (another key's is a 404) and are
kept until deleted, as at OpenAI.

Reads go to the database, so every replica sees every write. A turn's items are written before its
answer goes out; while the database is down they go to a batch writer (buffer, disk spool) and this
replica adds them to what it reads until the database has them. Everything else needs the database and
is a 503 `conversation_store_unavailable` while it is down."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.server.errors import APIError, bad_request, not_found
from gateway.conversation_lease import LEASE_S, ConversationLease, locked
from gateway.metadata import checked_metadata
from gateway.outcomes import storable
from gateway.responses_api import item_page, no_item_after, page_body, page_params, stored_items
from gateway.responses_input import input_messages
from gateway.section_config import ResponsesConfig, ServerConfig
from storage.conversations import ConversationItemWriter, ConversationStore
from storage.inserts import describe

log = logging.getLogger("pitstop.gateway")

MAX_ITEMS_PER_CALL = 20  # OpenAI's limit on items given to create a conversation or add to one
PENDING_CONVERSATIONS = 10_000  # with items not yet in the database, added to reads (older ones: once written)
WRITE_TIMEOUT_S = 2.0  # a database slower than this: the items go to the writer instead


class ItemClock:
    """Item order (`seq`): microseconds since the epoch x 1000, strictly increasing in this process, so
    a batch of up to 1000 items a microsecond keeps its order and replicas' writes interleave by time."""

    def __init__(self) -> None:
        self._last = 0

    def take(self, count: int) -> int:
        """The first of `count` consecutive values."""
        start = max(time.time_ns() // 1000 * 1000, self._last + 1)
        self._last = start + count - 1
        return start


def turn_hold_s(server: ServerConfig) -> float:
    """How long a turn may hold its conversation: its calls, every retry included, and a minute for its items."""
    return server.longest_call_s + 60.0


@dataclass
class Conversations:
    config: ResponsesConfig
    store: ConversationStore
    writer: ConversationItemWriter
    pending: OrderedDict[str, dict[str, dict]] = field(default_factory=OrderedDict)  # id -> item id -> row
    clock: ItemClock = field(default_factory=ItemClock)
    lease_s: float = LEASE_S  # a turn's hold on its conversation (gateway/conversation_lease.py)
    max_hold_s: float = 3600.0  # the longest a turn can take: its lease is renewed no longer

    def check_enabled(self, param: str | None = None) -> None:
        if not self.config.store:
            raise bad_request("this gateway keeps no conversations (responses.store is false): send the whole "
                              "conversation in 'input'", param, "unsupported")

    async def create(self, raw: Any, key_id: str | None) -> dict:
        """POST /v1/conversations: a new conversation, with its first items if given."""
        self.check_enabled()
        if not isinstance(raw, dict):
            raise bad_request("the body must be a JSON object")
        _only(raw, ("items", "metadata"))
        metadata = checked_metadata(raw.get("metadata"))
        items = _new_items(raw["items"], 0) if raw.get("items") is not None else []
        conversation = {"id": "conv_" + uuid.uuid4().hex, "created_at": datetime.now(UTC), "api_key_id": key_id,
                        "metadata": metadata}
        await self._write(self.store.create, conversation, self._rows(conversation["id"], items))
        return public(conversation)

    async def find(self, conversation_id: str, key_id: str | None) -> dict:
        return public(await self._owned(conversation_id, key_id))

    async def update(self, conversation_id: str, raw: Any, key_id: str | None) -> dict:
        """POST /v1/conversations/{id}: new metadata (the whole set: OpenAI's update replaces it)."""
        self.check_enabled()
        if not isinstance(raw, dict) or "metadata" not in raw:
            raise bad_request("the body must be an object with 'metadata'", "metadata", "missing_required_parameter")
        _only(raw, ("metadata",))
        metadata = checked_metadata(raw["metadata"])
        conversation = await self._owned(conversation_id, key_id)
        await self._write(self.store.set_metadata, conversation_id, metadata)
        return public({**conversation, "metadata": metadata})

    async def delete(self, conversation_id: str, key_id: str | None) -> None:
        await self._owned(conversation_id, key_id)
        self.pending.pop(conversation_id, None)
        await self._write(self.store.delete, conversation_id)

    async def items(self, conversation_id: str, key_id: str | None, param: str | None = None) -> list[dict]:
        """The conversation's items, in order (a 404 naming `param` for one that is not the caller's)."""
        return (await self._read(conversation_id, key_id, param))[1]

    async def page(self, conversation_id: str, key_id: str | None, query: Mapping[str, str]) -> dict:
        """GET /v1/conversations/{id}/items: one page, read by keyset from the database (from all the
        items, in memory, while some of this conversation's wait for the database here)."""
        params = page_params(query)
        if self.pending.get(conversation_id):
            return item_page(await self.items(conversation_id, key_id), query)
        self.check_enabled()
        try:
            page = await asyncio.to_thread(self.store.page, conversation_id, params.limit, params.descending,
                                           params.after)
        except Exception as exc:
            raise _unavailable(exc) from None
        _mine(page.conversation, conversation_id, key_id, None)
        if not page.after_found:
            raise no_item_after(params.after or "")
        return page_body([row["item"] for row in page.rows], page.has_more)

    async def item(self, conversation_id: str, item_id: str, key_id: str | None) -> dict:
        self.check_enabled()
        try:
            conversation, row = await asyncio.to_thread(self.store.item, conversation_id, item_id)
        except Exception as exc:
            raise _unavailable(exc) from None
        _mine(conversation, conversation_id, key_id, None)
        row = row or self.pending.get(conversation_id, {}).get(item_id)
        if row is None:
            raise not_found(f"no item {item_id!r} in conversation {conversation_id!r}", "item_id", "item_not_found")
        return row["item"]

    async def add(self, conversation_id: str, raw: Any, key_id: str | None) -> list[dict]:
        """POST /v1/conversations/{id}/items: items added at the end; they are returned with their ids."""
        self.check_enabled()
        if not isinstance(raw, dict) or raw.get("items") is None:
            raise bad_request("the body must be an object with 'items'", "items", "missing_required_parameter")
        _only(raw, ("items",))
        items = _new_items(raw["items"])
        await self._owned(conversation_id, key_id)
        await self._write(self.store.add, self._rows(conversation_id, items))
        return items

    async def delete_item(self, conversation_id: str, item_id: str, key_id: str | None) -> dict:
        """DELETE /v1/conversations/{id}/items/{item_id}: the conversation, as OpenAI answers it."""
        conversation = await self._owned(conversation_id, key_id)
        pending = self.pending.get(conversation_id, {}).pop(item_id, None)
        if not await self._write(self.store.delete_item, conversation_id, item_id) and pending is None:
            raise not_found(f"no item {item_id!r} in conversation {conversation_id!r}", "item_id", "item_not_found")
        return public(conversation)

    async def begin_turn(self, conversation_id: str, key_id: str | None) -> tuple[ConversationLease, list[dict]]:
        """The lease a turn holds on its conversation until it ends, and the conversation's items: a 400
        `conversation_locked` while another turn holds it, a 404 for one that is not the key's."""
        self.check_enabled("conversation")
        lease = ConversationLease(self.store, conversation_id, self.lease_s, self.max_hold_s)
        try:
            taken, conversation, rows = await lease.take(key_id)
        except Exception as exc:
            raise _unavailable(exc) from None
        _mine(conversation, conversation_id, key_id, "conversation")
        if not taken:
            raise locked(conversation_id)
        return lease, self._with_pending(conversation_id, rows)

    async def append(self, conversation_id: str, items: Sequence[dict], lease: ConversationLease | None = None) -> None:
        """A completed turn's input and output items, added before its answer goes out (and its lease given
        back in the same transaction); to the writer (and this replica's reads) when the database does not
        take them in time."""
        rows = self._rows(conversation_id, items)
        if lease is not None:
            await lease.stop_renewing()
        unlock = None if lease is None else (conversation_id, lease.token)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.add, rows, unlock), WRITE_TIMEOUT_S)
            if lease is not None:
                lease.given_back()
        except Exception as exc:  # served anyway: the writer keeps them until the database takes them
            log.warning("adding %d items to conversation %s: %s; they go to the writer", len(rows), conversation_id,
                        describe(exc))
            waiting = self.pending.setdefault(conversation_id, {})
            for row in self.store.complete_items(rows):
                self.writer.submit(row)
                waiting[row["id"]] = row
            self.pending.move_to_end(conversation_id)
            while len(self.pending) > PENDING_CONVERSATIONS:
                self.pending.popitem(last=False)

    def _rows(self, conversation_id: str, items: Sequence[dict]) -> list[dict]:
        first = self.clock.take(len(items))
        now = datetime.now(UTC)
        return [{"conversation_id": conversation_id, "id": item["id"], "seq": first + i, "created_at": now,
                 "item": storable(item)} for i, item in enumerate(items)]

    async def _owned(self, conversation_id: str, key_id: str | None, param: str | None = None) -> dict:
        self.check_enabled(param)
        try:
            conversation = await asyncio.to_thread(self.store.get, conversation_id)
        except Exception as exc:
            raise _unavailable(exc) from None
        return _mine(conversation, conversation_id, key_id, param)

    async def _read(self, conversation_id: str, key_id: str | None,
                    param: str | None) -> tuple[dict, list[dict]]:
        """The caller's conversation and its items: the database's, then this replica's pending ones."""
        self.check_enabled(param)
        try:
            conversation, rows = await asyncio.to_thread(self.store.with_items, conversation_id)
        except Exception as exc:
            raise _unavailable(exc) from None
        return _mine(conversation, conversation_id, key_id, param), self._with_pending(conversation_id, rows)

    def _with_pending(self, conversation_id: str, rows: list[dict]) -> list[dict]:
        """The items of the database's rows and of this replica's pending ones, in order."""
        waiting = self.pending.get(conversation_id)
        if waiting:
            for row in rows:  # written: the database has the say from now on
                waiting.pop(row["id"], None)
            if not waiting:
                del self.pending[conversation_id]
            rows = sorted([*rows, *waiting.values()], key=lambda row: (row["seq"], row["id"]))
        return [row["item"] for row in rows]

    @staticmethod
    async def _write(call: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(call, *args)
        except Exception as exc:
            raise _unavailable(exc) from None


def public(conversation: dict) -> dict:
    """The Conversation object the API answers."""
    return {"id": conversation["id"], "object": "conversation",
            "created_at": int(conversation["created_at"].timestamp()), "metadata": conversation["metadata"]}


def _mine(conversation: dict | None, conversation_id: str, key_id: str | None, param: str | None) -> dict:
    if conversation is None or conversation["api_key_id"] != key_id:  # another key's: as if there were none
        raise not_found(f"no conversation {conversation_id!r} (unknown, deleted, or made with another API key)",
                        param, "conversation_not_found")
    return conversation


def _only(raw: dict, fields: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}", unknown[0], "unknown_field")


def _new_items(items: Any, least: int = 1) -> list[dict]:
    """Items a client adds: checked as Responses input, at most 20, each with a new id."""
    if not isinstance(items, list) or not least <= len(items) <= MAX_ITEMS_PER_CALL:
        raise bad_request(f"'items' must be a list of {least} to {MAX_ITEMS_PER_CALL} items", "items",
                          "invalid_value")
    if not items:
        return []
    input_messages(items, "items")  # a 400 naming the item for one a chat cannot carry
    return stored_items([{k: v for k, v in item.items() if k != "id"} for item in items], uuid.uuid4().hex)


def _unavailable(exc: Exception) -> APIError:
    log.warning("conversations unavailable: %s", describe(exc))
    return APIError(503, "conversations are unavailable (the database is not answering); retry, or send the whole "
                    "conversation in 'input'", code="conversation_store_unavailable")
