"""bench/spec_decode_sim.py: agent programs replayed through the simulated engine with and without
speculation; skipped without the shared data."""

from __future__ import annotations

import pytest

from bench import spec_decode, spec_decode_sim
from bench.spec_decode import AgentTurn

pytestmark = pytest.mark.skipif(not spec_decode.TRACE.exists(),
                                reason=f"the shared data is not at {spec_decode.DATA} (see its README)")


def test_agent_programs_grow_their_conversation_turn_by_turn() -> None:
    programs = spec_decode.swe_agent_programs()
    assert len(programs) == 5 and sum(map(len, programs)) == 125
    for turns in programs:
        for turn, after in zip(turns, turns[1:], strict=False):
            # The next turn's prompt is this one's, its reply, then the tool results.
            assert after.context[: len(turn.context) + len(turn.output)] == turn.context + turn.output
        assert all(turn.tool_s >= 0 for turn in turns) and any(turn.tool_s > 0 for turn in turns)


def test_speculation_replays_the_same_turns_in_fewer_steps_and_less_time() -> None:
    programs = [turns[:4] for turns in spec_decode.swe_agent_programs()[:2]]
    row = spec_decode_sim.compare("llama-3.1-8b", programs, concurrency=3)
    plain = row["plain"]
    assert plain["accepted_tokens"] == plain["draft_tokens"] == 0
    for arm in ("speculative", "goodput"):
        fast = row[arm]
        assert plain["turns"] == fast["turns"] == 12  # three clients, the third a copy of the first program
        assert plain["output_tokens"] == fast["output_tokens"] == sum(len(t.output) for q in programs for t in q) \
            + sum(len(t.output) for t in programs[0])
        assert fast["accepted_tokens"] > 0 and fast["steps"] < plain["steps"]
        assert row[f"{arm}_decode_speedup"] > 1.2  # three sequences on an H100 roofline: drafts ride on the weight reads


def test_chat_programs_are_independent_questions() -> None:
    programs = spec_decode_sim.chat_programs(25, per_program=10)
    assert [(t.context, t.output) for p in programs for t in p] == spec_decode.alpaca_turns(25)
    assert all(0 < len(p) <= 10 for p in programs) and len(programs) == 3
    assert all(isinstance(t, AgentTurn) and t.tool_s == spec_decode_sim.CHAT_PAUSE_S for p in programs for t in p)
