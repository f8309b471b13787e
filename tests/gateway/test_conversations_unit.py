"""Conversations without HTTP, over a real SQLite file: a turn whose items the database did not take is
still continued by this replica, in order, until the writer has written them; item order holds
whichever write lands first; and a turn holds its conversation (renewing its lease) until it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.server.errors import APIError
from gateway.conversations import Conversations, ItemClock
from gateway.section_config import ResponsesConfig
from gateway.stored_responses import StoredResponses
from storage.conversations import ConversationItemWriter, ConversationStore
from storage.db import create_engine
from storage.migrate import upgrade
from storage.responses import ResponseStore, StoredResponseWriter


def _refuse(*_: object) -> None:
    raise ConnectionError("database down")


def _answer(turn_id: str, text: str) -> dict:
    return {"id": turn_id, "object": "response", "output": [
        {"type": "message", "id": "msg_" + turn_id, "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def test_items_the_database_refused_are_read_from_memory_until_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(db)
    store = ConversationStore(db)
    writer = ConversationItemWriter(db, flush_interval_s=3600)  # holds what it gets until it is closed
    conversations = Conversations(ResponsesConfig(), store, writer)
    responses = StoredResponses(ResponsesConfig(), ResponseStore(db), StoredResponseWriter(db), conversations)

    async def turn(conversation: str, n: int) -> list[dict]:
        begun = await responses.begin({"model": "m", "input": f"turn {n}", "conversation": conversation},
                                      f"req-{n}", "key")
        await begun.keep(_answer(begun.envelope.id, f"answer {n}"))
        await begun.end()
        return begun.chat["messages"]

    async def scenario() -> list[dict]:
        conversation = (await conversations.create({"items": [{"role": "user", "content": "hello"}]}, "key"))["id"]
        await turn(conversation, 1)
        with monkeypatch.context() as patch:
            patch.setattr(store, "add", _refuse)
            await turn(conversation, 2)  # its items go to the writer's buffer
        assert [len(rows) for rows in conversations.pending.values()] == [2]
        assert len(store.with_items(conversation)[1]) == 3  # the database has the first turn only
        third = await turn(conversation, 3)  # continued from memory, in order, and written at once
        assert [item["id"] for item in await conversations.items(conversation, "key")][3:] == [
            "msg_2_0", "msg_resp_2", "msg_3_0", "msg_resp_3"]
        paged = await conversations.page(conversation, "key", {"order": "asc", "limit": "5", "after": "msg_2_0"})
        assert [item["id"] for item in paged["data"]] == ["msg_resp_2", "msg_3_0", "msg_resp_3"]  # from memory too
        assert (await conversations.item(conversation, "msg_resp_2", "key"))["content"][0]["text"] == "answer 2"
        writer.close(timeout=10)  # now written
        assert len(store.with_items(conversation)[1]) == 7
        await conversations.items(conversation, "key")
        assert not conversations.pending  # the database has them: memory lets go
        return third

    messages = asyncio.run(scenario())
    assert messages == [{"role": "user", "content": "hello"}, {"role": "user", "content": "turn 1"},
                        {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "turn 2"},
                        {"role": "assistant", "content": "answer 2"}, {"role": "user", "content": "turn 3"}]


def test_the_item_clock_only_goes_forward() -> None:
    clock = ItemClock()
    firsts = [clock.take(count) for count in (3, 1, 1000, 2)]
    assert firsts[1] >= firsts[0] + 3 and firsts[2] >= firsts[1] + 1 and firsts[3] >= firsts[2] + 1000
    assert firsts[-1] < 2**63  # a 64-bit column holds it


def _conversations(tmp_path: Path, **lease: float) -> tuple[Conversations, StoredResponses, ConversationStore]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(db)
    store = ConversationStore(db)
    conversations = Conversations(ResponsesConfig(), store, ConversationItemWriter(db), **lease)
    return conversations, StoredResponses(ResponsesConfig(), ResponseStore(db), StoredResponseWriter(db),
                                          conversations), store


async def _locked_out(responses: StoredResponses, conversation: str) -> APIError:
    with pytest.raises(APIError) as refused:
        await responses.begin({"model": "m", "input": "meanwhile", "conversation": conversation}, "req-x", "key")
    return refused.value


def test_a_turn_holds_its_conversation_past_its_first_lease_until_it_ends(tmp_path: Path) -> None:
    conversations, responses, _ = _conversations(tmp_path, lease_s=0.6)

    async def scenario() -> None:
        conversation = (await conversations.create({}, "key"))["id"]
        other = (await conversations.create({}, "key"))["id"]
        first = await responses.begin({"model": "m", "input": "one", "conversation": conversation}, "req-1", "key")
        await asyncio.sleep(2.0)  # three leases: renewed all along
        refused = await _locked_out(responses, conversation)
        assert (refused.status, refused.code, refused.param) == (400, "conversation_locked", "conversation")
        beside = await responses.begin({"model": "m", "input": "x", "conversation": other}, "req-2", "key")
        await first.end()
        second = await responses.begin({"model": "m", "input": "two", "conversation": conversation}, "req-3", "key")
        await asyncio.gather(second.end(), beside.end(), first.end())  # a second end() does nothing
        third = await responses.begin({"model": "m", "input": "three", "conversation": conversation}, "req-5", "key")
        await third.keep(_answer(third.envelope.id, "answer 3"))  # its items' write gives the lease back
        fourth = await responses.begin({"model": "m", "input": "four", "conversation": conversation}, "req-6", "key")
        await asyncio.gather(third.end(), fourth.end())
        with pytest.raises(APIError) as missing:  # another key's conversation: as if there were none
            await responses.begin({"model": "m", "input": "x", "conversation": conversation}, "req-4", "other-key")
        assert (missing.value.status, missing.value.code) == (404, "conversation_not_found")

    asyncio.run(scenario())


def test_a_turn_never_ended_holds_its_conversation_no_longer_than_a_lease_past_its_longest(tmp_path: Path) -> None:
    """max_hold_s: a turn that is never ended (a replica that died, a bug) stops renewing its lease."""
    conversations, responses, _ = _conversations(tmp_path, lease_s=0.6, max_hold_s=0.3)

    async def scenario() -> None:
        conversation = (await conversations.create({}, "key"))["id"]
        await responses.begin({"model": "m", "input": "one", "conversation": conversation}, "req-1", "key")
        assert (await _locked_out(responses, conversation)).code == "conversation_locked"
        await asyncio.sleep(1.5)
        turn = await responses.begin({"model": "m", "input": "two", "conversation": conversation}, "req-2", "key")
        await turn.end()

    asyncio.run(scenario())


def test_a_turn_that_cannot_read_its_items_holds_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversations, responses, store = _conversations(tmp_path)

    async def scenario() -> None:
        conversation = (await conversations.create({}, "key"))["id"]
        with monkeypatch.context() as patch:
            patch.setattr(store, "_with_items", _refuse)  # after the lease is taken, in its transaction
            with pytest.raises(APIError) as down:
                await responses.begin({"model": "m", "input": "one", "conversation": conversation}, "req-1", "key")
            assert (down.value.status, down.value.code) == (503, "conversation_store_unavailable")
        assert store.get(conversation)["locked_until"] is None  # type: ignore[index]
        turn = await responses.begin({"model": "m", "input": "two", "conversation": conversation}, "req-2", "key")
        await turn.end()

    asyncio.run(scenario())
