"""StoredResponses without HTTP, over a real SQLite file: a response whose insert failed is served from
memory (with its ancestors from the database) until the writer has written it, then from the database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.section_config import ResponsesConfig
from gateway.stored_responses import StoredResponses
from storage.db import create_engine
from storage.migrate import upgrade
from storage.responses import ResponseStore, StoredResponseWriter


def _response(turn_id: str, text: str) -> dict:
    return {"id": turn_id, "object": "response", "output": [
        {"type": "message", "id": "msg_" + turn_id, "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


async def _turn(responses: StoredResponses, n: int, previous: str | None) -> str:
    body = {"model": "m", "input": f"turn {n}", **({"previous_response_id": previous} if previous else {})}
    turn = await responses.begin(body, f"req-{n}", "key")
    await turn.keep(_response(turn.envelope.id, f"answer {n}"))
    return turn.envelope.id


def test_a_response_whose_insert_failed_continues_from_memory_then_from_the_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(db)
    store = ResponseStore(db)
    writer = StoredResponseWriter(db, flush_interval_s=3600)  # holds what it gets until it is closed
    responses = StoredResponses(ResponsesConfig(), store, writer)

    async def scenario() -> list[dict]:
        first = await _turn(responses, 1, None)
        with monkeypatch.context() as patch:
            patch.setattr(store, "put", _refuse)
            second = await _turn(responses, 2, first)  # the insert fails: pending, in the writer's buffer
        assert list(responses.pending) == [second] and store.get(second, _now()) is None
        third = await responses.begin({"model": "m", "input": "turn 3", "previous_response_id": second}, "req-3",
                                      "key")
        writer.close(timeout=10)  # now written
        assert store.get(second, _now()) is not None
        await responses.find(second, "key")
        assert not responses.pending  # the database has it: memory lets go
        return third.chat["messages"]

    messages = asyncio.run(scenario())
    assert messages == [{"role": "user", "content": "turn 1"}, {"role": "assistant", "content": "answer 1"},
                        {"role": "user", "content": "turn 2"}, {"role": "assistant", "content": "answer 2"},
                        {"role": "user", "content": "turn 3"}]


def _now() -> datetime:
    return datetime.now(UTC)


def _refuse(row: dict) -> None:
    raise ConnectionError("the database went away")
