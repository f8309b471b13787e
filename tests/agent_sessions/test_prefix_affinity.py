"""Requests that name no session go where their longest prefix was served, within AffinityRule's load
bounds; the record is chained by prefix, bounded per instance, and renders chats in prompt order."""

from __future__ import annotations

from agent_sessions.affinity import AffinityRule, InstanceLoad
from agent_sessions.prefix_affinity import PrefixAffinity, request_text

SYSTEM = "You are a careful assistant. " * 100  # 2,900 characters


def loads(**outstanding: int) -> list[InstanceLoad]:
    return [InstanceLoad(name, True, n) for name, n in outstanding.items()]


def test_a_longer_prefix_goes_back_where_it_was_served() -> None:
    router = PrefixAffinity(AffinityRule(), chunk_chars=64, min_match_chars=1024)
    first = router.chunk_hashes(SYSTEM + "first question")
    assert router.choose(first, loads(a=0, b=0)).reason == "new"  # nothing remembered yet
    router.routed("b", first)
    follow_up = router.chunk_hashes(SYSTEM + "first question" + "an answer, and a second question" * 4)
    choice = router.choose(follow_up, loads(a=0, b=2))
    assert (choice.prefer, choice.reason) == ("b", "prefix")
    found = router.match(follow_up, ["a", "b"])
    assert found.instance == "b" and found.matched_chars == len(first) * 64 <= found.total_chars


def test_too_short_a_match_or_too_loaded_a_home_is_not_followed() -> None:
    router = PrefixAffinity(AffinityRule(overload_slack=4, overload_ratio=2.0), chunk_chars=64, min_match_chars=1024)
    router.routed("b", router.chunk_hashes(SYSTEM))
    short = router.chunk_hashes(SYSTEM[:900] + "something else entirely" * 50)
    assert router.match(short, ["a", "b"]).matched_chars == 896 and router.choose(short, loads(a=0, b=0)).reason == "new"
    again = router.chunk_hashes(SYSTEM + "more")
    assert router.choose(again, loads(a=1, b=5)).reason == "home_overloaded"
    assert router.choose(again, [InstanceLoad("a", True, 0), InstanceLoad("b", False, 0)]).reason == "new"  # b is down


def test_chunks_chain_so_a_changed_start_matches_nothing() -> None:
    router = PrefixAffinity(AffinityRule(), chunk_chars=64, min_match_chars=0)
    router.routed("a", router.chunk_hashes(SYSTEM))
    changed = router.chunk_hashes("X" + SYSTEM[1:])
    assert router.match(changed, ["a"]).matched_chars == 0  # later chunks are equal text, other chains


def test_each_instance_remembers_what_its_cache_holds() -> None:
    router = PrefixAffinity(AffinityRule(), chunk_chars=10, min_match_chars=0)
    old, new = router.chunk_hashes("o" * 1000), router.chunk_hashes("n" * 1000)
    router.routed("a", old, capacity_chars=1000)
    router.routed("a", new, capacity_chars=1000)  # 100 chunks fit: the old request's are forgotten
    assert router.match(old, ["a"]).matched_chars == 0 and router.match(new, ["a"]).matched_chars == 1000
    router.forget("a")
    assert router.match(new, ["a"]).instance is None


def test_request_text_renders_a_chat_in_prompt_order() -> None:
    tools = [{"type": "function", "function": {"name": "ls"}}]
    turn = {"tools": tools, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    later = {"tools": tools, "messages": [*turn["messages"],
                                          {"role": "assistant", "content": None,
                                           "tool_calls": [{"id": "c1", "function": {"name": "ls"}}]},
                                          {"role": "tool", "tool_call_id": "c1", "content": "a.py"}]}
    assert request_text(later).startswith(request_text(turn))
    assert "ls" in request_text(turn) and "c1" in request_text(later)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert "hi" in request_text(parts)
    assert request_text({"prompt": "p"}) == "p" and request_text({"prompt": ["a"]}) == ""


def test_a_share_threshold_ignores_a_common_system_prompt_alone() -> None:
    router = PrefixAffinity(AffinityRule(), chunk_chars=64, min_match_chars=1024, min_match_share=0.5)
    router.routed("a", router.chunk_hashes(SYSTEM + "one user's question"))
    other_user = router.chunk_hashes(SYSTEM + "another user's long question " * 120)  # the prompt is a third of it
    assert router.match(other_user, ["a"]).matched_chars >= 2048
    assert router.choose(other_user, loads(a=0, b=0)).reason == "new"
    same_user = router.chunk_hashes(SYSTEM + "one user's question" + "and a follow-up")
    assert router.choose(same_user, loads(a=0, b=0)).prefer == "a"


def test_of_instances_holding_as_much_the_least_loaded_is_chosen() -> None:
    router = PrefixAffinity(AffinityRule(), chunk_chars=64, min_match_chars=1024)
    for name in ("a", "b", "c"):  # each has served a conversation opening with the same system prompt
        router.routed(name, router.chunk_hashes(SYSTEM + f"conversation {name}"))
    new_conversation = router.chunk_hashes(SYSTEM + "a new one")
    assert router.choose(new_conversation, loads(a=3, b=1, c=2)).prefer == "b"
    assert router.choose(new_conversation, loads(a=0, b=1, c=2)).prefer == "a"
