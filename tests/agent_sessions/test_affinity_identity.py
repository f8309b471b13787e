"""Affinity rule and request identity: which instance, which session, which turn."""

from __future__ import annotations

from agent_sessions.affinity import AffinityRule, InstanceLoad
from agent_sessions.identity import (
    MAX_SESSION_ID_CHARS,
    agent_of,
    scoped_session_id,
    session_id_of,
    turn_shape,
)

RULE = AffinityRule(overload_slack=8, overload_ratio=3.0)


def loads(**outstanding: int) -> list[InstanceLoad]:
    return [InstanceLoad(name, True, n) for name, n in outstanding.items()]


def test_stays_home_unless_down_or_far_more_loaded() -> None:
    assert RULE.choose(None, loads(a=0, b=0)).reason == "new"
    assert RULE.choose("a", loads(a=5, b=0)).prefer == "a"  # a small lead: keep the KV
    assert RULE.choose("a", loads(a=9, b=0)).reason == "home_overloaded"
    assert RULE.choose("a", loads(a=20, b=10)).prefer == "a"  # busier, but not 3x
    assert RULE.choose("a", loads(a=31, b=10)).prefer is None
    down = [InstanceLoad("a", False, 0), InstanceLoad("b", True, 3)]
    assert RULE.choose("a", down).reason == "home_down"
    assert RULE.choose("gone", loads(b=0)).reason == "home_down"
    assert RULE.choose("a", loads(a=50)).prefer == "a"  # nowhere else to go


def test_session_id_fallbacks() -> None:
    assert session_id_of("s", {"user": "u"}) == "s"
    assert session_id_of(None, {"user": "u"}) == "user:u"
    assert session_id_of(None, {"user": ""}) is None and session_id_of(None, {}) is None
    assert agent_of({"metadata": {"agent": "swe"}}) == "swe" and agent_of({"metadata": "x"}) is None


def test_sessions_are_scoped_by_api_key() -> None:
    key, other = "a" * 32, "b" * 32
    assert scoped_session_id("agent-1", None) == "agent-1"  # no key: the id as sent
    assert scoped_session_id("agent-1", key) == f"{key}:agent-1" != scoped_session_id("agent-1", other)
    # A caller without a key cannot name its way into a key's sessions.
    assert scoped_session_id(f"{key}:agent-1", None) == f"~{key}:agent-1"
    # Ids that would pass the engines' limit once scoped are hashed, still one per (key, id).
    longest = [scoped_session_id(c * 256, key) for c in "xy"]
    assert all(len(s) <= MAX_SESSION_ID_CHARS and s.startswith(f"{key}:sha256:") for s in longest)
    assert longest[0] != longest[1] and scoped_session_id("x" * 256, None) == "x" * 256


def call(name: str, i: int = 0) -> dict:
    return {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}


def test_turn_shape_reads_tool_results_sent_back() -> None:
    first = {"messages": [{"role": "user", "content": "fix it"}], "tools": [{"type": "function"}]}
    shape = turn_shape(first)
    assert not shape.returning and shape.declares_tools
    back = {"messages": [{"role": "user", "content": "fix it"},
                         {"role": "assistant", "content": None, "tool_calls": [call("bash"), call("view", 1)]},
                         {"role": "tool", "tool_call_id": "c0", "content": "ok"},
                         {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}
    shape = turn_shape(back)
    assert shape.returning and shape.tools_answered == ["bash", "view"] and not shape.declares_tools
    human = {"messages": back["messages"] + [{"role": "assistant", "content": "done"}, {"role": "user", "content": "thanks"}]}
    assert not turn_shape(human).returning
    orphan = {"messages": [{"role": "tool", "content": "?"}]}
    assert not turn_shape(orphan).returning
    assert not turn_shape({"prompt": "text"}).returning
