"""The Responses API's stored responses: a turn continues its chain (`previous_response_id`), and is
kept when it completes, before the client can name it; GET and DELETE /v1/responses/{id} and its
`input_items`.

A response is written to the database (in a thread) before its body or its `response.completed` event
goes out, so any replica can continue it at once, and reads go to the database, so a deletion or an
expiry holds on every replica. While the database is down a response goes to a batch writer (buffer,
then disk spool, written once the database is back) and this replica serves it from memory until the
database has it; a chain that needs rows only the database has is a 503 then.

Responses belong to the API key that made them (as sessions do): another key's id is a 404. A chain is
one agent session (agent_sessions/) from its second turn on, named by its first response's id, unless
the client names one; so a Responses agent's KV stays pinned between turns without any header. A turn
in a `conversation` (gateway/conversations.py) continues its items instead, and adds its own to it."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent_sessions.identity import session_id_of
from engine.server.errors import APIError, bad_request, not_found
from gateway.background import BackgroundRuns, failed, view
from gateway.compaction_items import CompactionRule, compaction_rule
from gateway.conversation_lease import ConversationLease
from gateway.conversations import Conversations
from gateway.file_search import call_item as search_call_item
from gateway.file_search import cited_files, context_text, file_search_of, query_of, with_context
from gateway.mcp_client import CALL_TIMEOUT_S, McpSession
from gateway.mcp_connections import McpConnections
from gateway.mcp_loop import McpLoop, begin_loop, whole_response
from gateway.mcp_tools import mcp_servers_of
from gateway.outbound_policy import OutboundPolicy
from gateway.outcomes import storable
from gateway.periodic import Periodic
from gateway.request_body import ProxyRequest
from gateway.responses_api import (
    ResponseEnvelope,
    chat_request,
    check_request,
    continued,
    conversation_of,
    stored_items,
)
from gateway.responses_stream import ResponseStream
from gateway.section_config import ResponsesConfig
from gateway.vector_stores import VectorStores
from storage.inserts import describe
from storage.responses import ACTIVE, ResponseStore, StoredResponseWriter

log = logging.getLogger("pitstop.gateway")

PENDING_RESPONSES = 10_000  # not yet in the database, served from memory (older ones: once written)
WRITE_TIMEOUT_S = 2.0  # a database slower than this: the response goes to the writer instead
SWEEP_INTERVAL_S = 3600.0
BACKGROUND_ONLY_KEPT = timedelta(minutes=10)  # a background response with `store: false`: long enough to poll


@dataclass
class ResponsesTurn:
    """One Responses request (a gateway/dialects.py Dialect): the chat it is served as, and what is kept
    of it once it completes."""

    envelope: ResponseEnvelope
    chat: dict
    items: list[dict]  # its own input, as stored
    store: bool
    responses: StoredResponses
    key_id: str | None
    previous: dict | None = None  # the stored response it continues
    session_id: str | None = None  # the chain's session; once adopted, the one the turn runs under
    conversation: str | None = None  # the conversation it continues and adds its items to
    lease: ConversationLease | None = None  # held on that conversation until the turn is over
    background: bool = False  # run on its own (gateway/background.py), its state kept in its row
    request: dict | None = None  # a background turn's request as sent: kept, for a takeover to run it again
    resumed: bool = False  # a background turn taken over from a replica that stopped: its row exists
    queued: dict | None = None  # a background turn's Response as first answered
    compaction: CompactionRule | None = None  # `context_management`: compact first past a threshold
    earlier: list[dict] = field(default_factory=list)  # the items of the chain or conversation it continues
    mcp: McpLoop | None = None  # its MCP tools' loop (gateway/mcp_loop.py)

    @property
    def ancestors(self) -> list[str]:
        return [] if self.previous is None else [*self.previous["ancestors"], self.previous["id"]]

    def adopt(self, parsed: ProxyRequest) -> None:
        if parsed.session_id is None:  # a stored chain, or a conversation, is one session
            parsed.session_id = self.session_id
        self.session_id = session_id_of(parsed.session_id, parsed.body)

    async def answer(self, answer: dict, model: str) -> dict:
        if self.mcp is not None:
            response = await whole_response(self.mcp, answer, model)
        else:
            response = self.envelope.from_chat(answer, model)
        await self.keep(response)
        return response

    def stream(self, model: str) -> ResponseStream:
        return ResponseStream(self.envelope, model, self.keep, self.end, self.mcp)

    async def keep(self, response: dict) -> None:
        await self.responses.keep(self, response)

    async def end(self) -> None:
        if self.lease is not None:
            await self.lease.end()

    async def started(self) -> None:
        """A background turn's run began: `in_progress`."""
        assert self.queued is not None
        await self.responses.background.advance({**self.queued, "status": "in_progress"})

    async def failed(self, error: APIError) -> None:
        """A background turn that ended in an error: its row says so."""
        assert self.queued is not None
        await self.responses.background.advance(failed(self.queued, error))

    async def cancelled(self) -> None:
        assert self.queued is not None
        await self.responses.background.advance({**self.queued, "status": "cancelled"})

    async def released(self) -> None:
        """A background turn let go at shutdown: `queued` again, for a replica to take over."""
        assert self.queued is not None
        await self.responses.background.release(self.queued)


@dataclass
class StoredResponses:
    config: ResponsesConfig
    store: ResponseStore
    writer: StoredResponseWriter
    conversations: Conversations | None = None  # where turns naming a `conversation` continue
    vector_stores: VectorStores | None = None  # what a `file_search` tool searches
    outbound: Callable[[], OutboundPolicy] = OutboundPolicy  # where MCP servers may be (the config's, as reloaded)
    background: BackgroundRuns = field(init=False)  # the `background: true` responses this replica runs
    mcp: McpConnections = field(init=False)  # remote MCP servers' connections, kept for agent sessions
    pending: OrderedDict[str, dict] = field(default_factory=OrderedDict)  # waiting for the database
    _sweeper: Periodic | None = None

    def __post_init__(self) -> None:
        self.background = BackgroundRuns(self.store)
        self.mcp = McpConnections(self.config.mcp_idle_s, CALL_TIMEOUT_S, policy=self.outbound)

    async def begin(self, raw: Any, request_id: str, key_id: str | None, resumed: dict | None = None) -> ResponsesTurn:
        """The turn a Responses request stands for, after the chain it continues (404 for one that is
        not this key's, or has expired; 503 while only the unreachable database has it), its file search
        made and its MCP tools listed (the client's approvals answered). `resumed`: the row of a background response taken over, whose request `raw` is: the turn is
        that response."""
        raw = check_request(raw)
        search = file_search_of(raw)  # checked before anything is held
        servers = mcp_servers_of(raw)
        turn = await self._begin(raw, request_id, key_id, resumed)
        turn.compaction = compaction_rule(raw)
        if servers:
            try:
                # The agent session's connections: a conversation, a chain (named by its first response,
                # which is this one on a chain's first turn), else this Response alone.
                scope = f"{key_id}:{turn.session_id or turn.envelope.id}"
                turn.mcp = await begin_loop(servers, turn.envelope, turn.chat, raw, turn.earlier, request_id,
                                            McpSession(self.mcp, scope))
            except BaseException:
                await turn.end()
                raise
        query = query_of(raw) if search is not None else None
        if search is not None and query is not None:
            if self.vector_stores is None:
                raise bad_request("this gateway keeps no vector stores", "tools", "unsupported")
            try:
                results = await self.vector_stores.search(search.store_ids, [query], key_id, search.limit,
                                                          search.ranking, search.filters, "tools")
            except BaseException:
                await turn.end()  # a conversation's turn is let go
                raise
            with_context(turn.chat, context_text(query, results))
            turn.envelope.cited = cited_files(results)
            turn.envelope.lead_items.append(
                search_call_item(turn.envelope.id, query, results if search.include_results else None))
        return turn

    async def _begin(self, raw: dict, request_id: str, key_id: str | None, resumed: dict | None) -> ResponsesTurn:
        store = self.config.store and raw.get("store", True)
        background = bool(raw.get("background"))
        if background and not self.config.store:
            raise bad_request("'background' needs stored responses, which this gateway keeps none of "
                              "(responses.store is false)", "background", "unsupported")
        envelope = ResponseEnvelope(request_id, raw, store)
        if resumed is not None:  # the same response, so its items' ids are the same too
            envelope.id, envelope.created_at = resumed["id"], resumed["response"]["created_at"]
        previous_id = raw.get("previous_response_id")
        conversation = conversation_of(raw)
        chat = chat_request(raw)  # checked before any query
        kept = store or conversation is not None or background
        items = stored_items(raw.get("input"), envelope.id.removeprefix("resp_")) if kept else []
        running = {"background": background, "request": raw if background else None, "resumed": resumed is not None}
        if conversation is not None:
            if self.conversations is None:
                raise bad_request("this gateway keeps no conversations", "conversation", "unsupported")
            lease, earlier = await self.conversations.begin_turn(conversation, key_id)  # one turn at a time
            return ResponsesTurn(envelope, continued(chat, raw, earlier), items, store, self, key_id,
                                 session_id=conversation, conversation=conversation, lease=lease, earlier=earlier,
                                 **running)
        if previous_id is None:
            return ResponsesTurn(envelope, continued(chat, raw, []), items, store, self, key_id, **running)
        previous, earlier = await self._chain_items(previous_id, key_id)
        session = previous["session_id"] or (previous["ancestors"] or [previous_id])[0]
        return ResponsesTurn(envelope, continued(chat, raw, earlier), items, store, self, key_id, previous, session,
                             earlier=earlier, **running)

    async def _chain_items(self, previous_id: str, key_id: str | None) -> tuple[dict, list[dict]]:
        """The response a request continues, and its chain's items in order: 404 for a chain that is not
        the key's or is broken, 400 for a background response still running."""
        if not self.config.store:
            raise bad_request("'previous_response_id' needs stored responses, which this gateway keeps none of "
                              "(responses.store is false): send the whole conversation in 'input'",
                              "previous_response_id", "unsupported")
        previous, chain = await self._owned(previous_id, key_id, "previous_response_id", with_ancestors=True)
        if previous.get("status") in ACTIVE:
            raise bad_request(f"{previous_id!r} is a background response still {previous['status']}: continue it "
                              "once it has completed", "previous_response_id", "invalid_value")
        missing = [rid for rid in previous["ancestors"] if rid not in chain]
        if missing:
            raise not_found(f"the conversation {previous_id!r} continues includes {missing[0]!r}, which was "
                            "deleted or has expired", "previous_response_id", "previous_response_not_found")
        return previous, [item for row in [*(chain[rid] for rid in previous["ancestors"]), previous]
                          for item in (*row["input_items"], *row["response"]["output"])]

    async def input_chat(self, raw: Any, key_id: str | None, input_required: bool = True) -> dict:
        """POST /v1/responses/input_tokens (and /v1/responses/compact, whose `input` may be left out): the
        chat the request would send, after the chain or the conversation it names (read, not held: nothing
        is served), for its tokens to be counted."""
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "personality"}  # a model setting, not input
        raw = check_request(raw)
        chat = chat_request(raw, input_required)
        earlier: list[dict] = []
        if (conversation := conversation_of(raw)) is not None:
            if self.conversations is None:
                raise bad_request("this gateway keeps no conversations", "conversation", "unsupported")
            earlier = await self.conversations.items(conversation, key_id, "conversation")
        elif (previous_id := raw.get("previous_response_id")) is not None:
            earlier = (await self._chain_items(previous_id, key_id))[1]
        return continued(chat, raw, earlier)

    async def keep(self, turn: ResponsesTurn, response: dict) -> None:
        """Add a completed turn's items to its conversation, and store the response (when its turn is
        stored), before the client gets it: the two writes at once."""
        writes = [self._store(turn, response)] if turn.store or turn.background else []
        if turn.conversation is not None and self.conversations is not None:
            writes.append(self.conversations.append(turn.conversation, [*turn.items, *response["output"]], turn.lease))
        await asyncio.gather(*writes)

    def _row(self, turn: ResponsesTurn, response: dict, **fields: Any) -> dict:
        now = datetime.now(UTC)
        # A background response the client asked not to store is kept for polling only, as at OpenAI.
        kept = timedelta(days=self.config.retention_days) if turn.store else BACKGROUND_ONLY_KEPT
        return self.store.complete({
            "id": response["id"], "created_at": now, "expires_at": now + kept, "api_key_id": turn.key_id,
            "previous_response_id": turn.previous["id"] if turn.previous else None, "ancestors": turn.ancestors,
            "session_id": turn.session_id, "input_items": storable(turn.items), "response": storable(response),
            **fields})

    async def run_in_background(self, turn: ResponsesTurn, model: str, work: Callable[[], Coroutine[Any, Any, None]],
                                streamed: bool = False) -> dict:
        """A background turn's row, `queued`, written before the answer (any replica can poll it at once),
        then its run started; the Response as first answered. A turn taken over has its row, and its lease."""
        turn.queued = queued = turn.envelope.response(model, "queued", [], None)
        if not turn.resumed:
            row = self._row(turn, queued, status="queued", lease_until=self.background.lease_until(),
                            lease_token=self.background.hold(queued["id"]), request=turn.request)
            try:
                await asyncio.to_thread(self.store.put, row)
            except Exception as exc:
                self.background.holds.pop(queued["id"], None)
                raise _unavailable(exc) from None
        self.background.start(queued["id"], work, streamed)
        return queued

    async def follow(self, response_id: str, key_id: str | None, after: int) -> AsyncGenerator[bytes, None]:
        """GET /v1/responses/{id}?stream=true: a background response's events after `after` (checked
        before its stream starts: a 404 or a 400 is an answer of its own)."""
        row = (await self._owned(response_id, key_id, None))[0]
        if row.get("status") is None:
            raise bad_request("only a background response's stream can be resumed; this one has ended: read it "
                              "without 'stream'", "stream", "unsupported")

        async def read() -> dict:
            return (await self._owned(response_id, key_id, None))[0]

        return self.background.follow(row, after, read)

    async def cancel(self, response_id: str, key_id: str | None) -> dict:
        """POST /v1/responses/{id}/cancel: a background response, stopped (as it is, once it has ended)."""
        row = (await self._owned(response_id, key_id, None))[0]
        if row.get("status") is None:
            raise bad_request("only a response created with 'background' can be cancelled", None, "invalid_value")
        if row["status"] in ACTIVE:
            await self.background.cancel(row)
            row = (await self._owned(response_id, key_id, None))[0]
        return view(row, datetime.now(UTC))

    async def _store(self, turn: ResponsesTurn, response: dict) -> None:
        if turn.background:  # its row exists: its end is written there
            await self.background.advance(response)
            return
        row = self._row(turn, response)
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.put, row), WRITE_TIMEOUT_S)
        except Exception as exc:  # served anyway: the writer keeps it until the database takes it
            log.warning("storing response %s: %s; it goes to the writer", row["id"], describe(exc))
            self.writer.submit(row)
            self.pending[row["id"]] = row
            while len(self.pending) > PENDING_RESPONSES:
                self.pending.popitem(last=False)

    async def find(self, response_id: str, key_id: str | None) -> dict:
        return view((await self._owned(response_id, key_id, None))[0], datetime.now(UTC))

    async def items(self, response_id: str, key_id: str | None) -> list[dict]:
        return (await self._owned(response_id, key_id, None))[0]["input_items"]

    async def delete(self, response_id: str, key_id: str | None) -> None:
        await self._owned(response_id, key_id, None)
        self.pending.pop(response_id, None)
        try:
            await asyncio.to_thread(self.store.delete, response_id)
        except Exception as exc:
            raise _unavailable(exc) from None

    async def _owned(self, response_id: str, key_id: str | None, param: str | None,
                     with_ancestors: bool = False) -> tuple[dict, dict[str, dict]]:
        """The caller's response (a 404 for one that is not), and its ancestors when asked for."""
        row, ancestors = await self._chain(response_id, with_ancestors)
        if row is None or row["api_key_id"] != key_id:  # another key's: as if there were none
            code = "previous_response_not_found" if param else "response_not_found"
            raise not_found(f"no response {response_id!r} (unknown, deleted, expired, or made with another "
                            "API key)", param, code)
        return row, ancestors

    async def _chain(self, response_id: str, with_ancestors: bool) -> tuple[dict | None, dict[str, dict]]:
        """The row and its ancestors: the database's, and pending ones it does not have yet."""
        now = datetime.now(UTC)
        try:
            row, ancestors = await asyncio.to_thread(self.store.chain, response_id, now, with_ancestors)
        except Exception as exc:
            row = self._pending(response_id, now)
            ancestors = self._pending_many(row["ancestors"] if row and with_ancestors else [], now)
            if row is None or len(ancestors) < len(row["ancestors"]) * with_ancestors:
                raise _unavailable(exc) from None
            return row, ancestors
        if row is not None:
            self.pending.pop(response_id, None)  # written: the database has the say from now on
        elif (row := self._pending(response_id, now)) is not None and with_ancestors and row["ancestors"]:
            try:  # not written yet, its ancestors may be
                ancestors = await asyncio.to_thread(self.store.many, row["ancestors"], now)
            except Exception as exc:
                raise _unavailable(exc) from None
        if row is not None and with_ancestors:
            ancestors |= self._pending_many([rid for rid in row["ancestors"] if rid not in ancestors], now)
        return row, ancestors

    def _pending_many(self, ids: list[str], now: datetime) -> dict[str, dict]:
        return {rid: row for rid in ids if (row := self._pending(rid, now)) is not None}

    def _pending(self, response_id: str, now: datetime) -> dict | None:
        row = self.pending.get(response_id)
        return row if row is not None and row["expires_at"] > now else None

    async def start(self) -> None:
        self._sweeper = Periodic(self._sweep, SWEEP_INTERVAL_S, "deleting expired stored responses")
        self._sweeper.start()
        self.background.start_taking_over()

    async def _sweep(self) -> None:
        """Delete expired responses, and conversation items left behind by a deleted conversation, now
        and then (every replica may; deleting twice is harmless)."""
        purged = await asyncio.to_thread(self.store.purge, datetime.now(UTC))
        orphans = await asyncio.to_thread(self.conversations.store.purge_orphans) if self.conversations else 0
        if purged or orphans:
            log.info("deleted %d expired stored responses, %d items of deleted conversations", purged, orphans)

    async def close(self) -> None:
        """After the background runs (`close_runs`)."""
        if self._sweeper is not None:
            await self._sweeper.close()
        await self.mcp.close()
        self.writer.close(timeout=10)


def _unavailable(exc: Exception) -> APIError:
    log.warning("stored responses unavailable: %s", describe(exc))
    return APIError(503, "stored responses are unavailable (the database is not answering); retry, or send the "
                    "whole conversation in 'input'", code="response_store_unavailable")
