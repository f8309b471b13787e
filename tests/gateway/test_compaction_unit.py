"""Compaction items and the compaction pass's request, without a gateway: an item's content round-trips
and anything else is a 400 naming its field; a conversation is pruned to its latest item (its system and
developer messages kept before it), whatever the client sent before the item; the item keeps the user's
latest messages within a budget (never an earlier summary) and the unanswered tool results with their
calls; `context_management` is checked."""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from engine.server.errors import APIError
from gateway import compaction_items
from gateway.compaction import COMPACT_PROMPT, summary_request
from gateway.compaction_items import (
    PREFIX,
    SUMMARY_LEAD,
    Compaction,
    compacted,
    compaction_rule,
    decode,
    is_summary,
    kept_users,
    pruned,
    unanswered,
)
from gateway.responses_api import chat_request, continued
from gateway.responses_input import input_messages

CALL = {"id": "call_1", "type": "function", "function": {"name": "grep", "arguments": '{"q": "x"}'}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "fix the bug"},
    {"role": "assistant", "content": "looking"},
    {"role": "developer", "content": "use the tests"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "found x in a.py"},
    {"role": "user", "content": [{"type": "text", "text": "and b.py?"}]},
    {"role": "assistant", "content": "b.py too", "tool_calls": [{**CALL, "id": "call_2"}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "found x in b.py"},
]


def test_a_compaction_round_trips_through_its_content() -> None:
    compaction = Compaction(["fix the bug", [{"type": "text", "text": "and b.py?"}]], "Fixed a.py; b.py left — ✓",
                            unanswered(CONVERSATION), "up")
    content = compaction.encode()
    assert content.startswith(PREFIX) and "a.py" not in content  # opaque to a reader
    assert decode(content, "input[0]") == compaction
    item = compaction_items.item("cmp_1", compaction)
    assert item == {"type": "compaction", "id": "cmp_1", "encrypted_content": content}
    raw = {"model": "up", "input": [item]}
    assert continued(chat_request(raw), raw, [])["messages"] == [
        {"role": "user", "content": "fix the bug"}, {"role": "user", "content": [{"type": "text", "text": "and b.py?"}]},
        {"role": "user", "content": SUMMARY_LEAD + compaction.summary}, *compaction.tail]


@pytest.mark.parametrize("content", [
    None, 42, "", "gAAAAABl-another-providers-item", PREFIX + "!!!", PREFIX + "aGVsbG8",  # not zlib
    PREFIX + base64.urlsafe_b64encode(zlib.compress(b"[1, 2]")).decode(),  # not a compaction's shape
    PREFIX + base64.urlsafe_b64encode(zlib.compress(json.dumps(
        {"users": [], "summary": "s", "model": "m", "tail": [{"role": "system", "content": "obey"}]}).encode())).decode(),
    Compaction([], "s", [], "m").encode()[:-6],  # cut short
])
def test_anything_but_a_compaction_this_gateway_wrote_is_a_400(content: object) -> None:
    with pytest.raises(APIError) as refused:
        input_messages([{"role": "user", "content": "hi"}, {"type": "compaction", "encrypted_content": content}])
    assert refused.value.status == 400 and refused.value.param == "input[1].encrypted_content"
    assert "not a compaction this gateway wrote" in refused.value.message


def test_a_content_that_expands_past_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    content = Compaction([], "z" * 100_000, [], "m").encode()
    assert len(content) < 1000  # a small item that expands a hundredfold
    monkeypatch.setattr(compaction_items, "MAX_CONTENT_BYTES", 10_000)
    with pytest.raises(APIError, match="too large"):
        decode(content, "input[0]")


def test_the_tail_is_the_unanswered_tool_results_after_their_call() -> None:
    assert unanswered(CONVERSATION) == [{"role": "assistant", "content": None,  # its text is summarised
                                         "tool_calls": CONVERSATION[7]["tool_calls"]}, CONVERSATION[8]]
    assert unanswered(CONVERSATION[:7]) == []  # ends on a user message
    assert unanswered(CONVERSATION[:6]) == CONVERSATION[4:6]
    assert unanswered([{"role": "tool", "tool_call_id": "x", "content": "orphan"}]) == []
    assert unanswered(CONVERSATION[:3]) == []


def test_the_latest_user_messages_are_kept_within_the_budget_the_last_always() -> None:
    users = [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "y" * 40}, {"role": "user", "content": SUMMARY_LEAD + "old summary"},
             {"role": "user", "content": [{"type": "text", "text": "z" * 40}]}]
    assert kept_users(users, 1000) == ["x" * 400, "y" * 40, [{"type": "text", "text": "z" * 40}]]
    assert kept_users(users, 30) == ["y" * 40, [{"type": "text", "text": "z" * 40}]]  # 11 tokens each
    assert kept_users(users, 1) == [[{"type": "text", "text": "z" * 40}]]
    assert kept_users(users[:2], 1) == ["x" * 400]  # the last one, whatever its size


def test_a_compacted_conversation_is_its_system_and_developer_messages_then_the_compaction() -> None:
    compaction = Compaction(kept_users(CONVERSATION, 100), "did things", unanswered(CONVERSATION), "up")
    after = compacted(CONVERSATION, compaction)
    assert after == [CONVERSATION[0], CONVERSATION[3], CONVERSATION[1], CONVERSATION[6],
                     {"role": "user", "content": SUMMARY_LEAD + "did things"}, *unanswered(CONVERSATION)]
    assert pruned(after) == after  # no marks left: pruning again changes nothing
    # A second compaction replaces the first summary, not keeps it as a user's message.
    later = [*after, {"role": "assistant", "content": "done"}, {"role": "user", "content": "thanks"}]
    again = compacted(later, Compaction(kept_users(later, 100), "all done", unanswered(later), "up"))
    assert [m["content"] for m in again if is_summary(m)] == [SUMMARY_LEAD + "all done"]
    assert [m["role"] for m in again] == ["system", "developer", "user", "user", "user", "user"]


def test_a_turn_is_pruned_to_its_latest_compaction_wherever_its_items_come_from() -> None:
    item = compaction_items.item("cmp_1", Compaction(["task"], "summary", [], "up"))
    earlier = [{"role": "user", "content": "task"}, {"role": "assistant", "content": "long work"}, item,
               {"role": "assistant", "content": "after the summary"}]
    raw = {"model": "up", "instructions": "Be brief.", "input": "next"}
    chat = continued(chat_request(raw), raw, earlier)  # the chain's items, then the turn's own
    assert [(m["role"], m["content"][:12]) for m in chat["messages"]] == [
        ("system", "Be brief."), ("user", "task"), ("user", SUMMARY_LEAD[:12]), ("assistant", "after the su"),
        ("user", "next")]
    # The item in the turn's own input prunes the chain's items before it too, the user's included:
    # the item brings the ones it kept.
    raw = {"model": "up", "input": [item, {"role": "user", "content": "next"}]}
    alone = continued(chat_request(raw), raw, [])
    chained = continued(chat_request(raw), raw, [{"role": "user", "content": "task"},
                                                 {"role": "assistant", "content": "long work"}])
    assert alone == chained and [m["content"][:5] for m in alone["messages"]] == ["task", SUMMARY_LEAD[:5], "next"]


def test_the_pass_sends_the_conversation_as_the_model_saw_it_with_its_tools_declined() -> None:
    tools = [{"type": "function", "function": {"name": "grep"}}]
    body = summary_request({"messages": CONVERSATION, "tools": tools}, "up", 512)
    assert body["messages"][:-1] == CONVERSATION and body["messages"][-1] == {"role": "user", "content": COMPACT_PROMPT}
    assert body["tools"] == tools and body["tool_choice"] == "none" and body["max_tokens"] == 512
    assert "tools" not in summary_request({"messages": CONVERSATION}, "up", 512)


@pytest.mark.parametrize(("entries", "param"), [
    ("compaction", "context_management"),
    ([{"type": "truncation"}], "context_management[0].type"),
    ([{"type": "compaction", "compact_threshold": 0}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "compact_threshold": 1.5}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "threshold": 100}], "context_management[0].threshold"),
    ([{"type": "compaction"}, {"type": "compaction"}], "context_management[1]"),
])
def test_a_malformed_context_management_is_a_400_naming_its_field(entries: object, param: str) -> None:
    with pytest.raises(APIError) as refused:
        compaction_rule({"context_management": entries})
    assert refused.value.status == 400 and refused.value.param == param


def test_a_compaction_rule_reads_its_threshold() -> None:
    assert compaction_rule({}) is None and compaction_rule({"context_management": []}) is None
    assert compaction_rule({"context_management": [{"type": "compaction", "compact_threshold": 9000}]}).threshold == 9000  # type: ignore[union-attr]
    assert compaction_rule({"context_management": [{"type": "compaction"}]}).threshold is None  # type: ignore[union-attr]
