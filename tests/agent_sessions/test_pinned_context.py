"""Which prompt tokens of a turn the engine already holds (gateway/sessions.py's pinned_context): the
last turn's pinned context, only while the pin lives and only on the instance holding it."""

from __future__ import annotations

import pytest

from agent_sessions.identity import TurnShape
from agent_sessions.manager import Turn
from agent_sessions.state import SessionState
from gateway.sessions import pinned_context

NOW = 1_000_000.0


def _turn(turns: int, pin_deadline: float | None, pinned_tokens: int = 512) -> Turn:
    state = SessionState("s", program_start=NOW - 60, instance="tiny#0", turns=turns,
                         pin_deadline=pin_deadline, pinned_tokens=pinned_tokens)
    return Turn("s", state, TurnShape(turns > 0, ["bash"] if turns else [], True), NOW, None, [], state.instance)


@pytest.mark.parametrize(("turns", "deadline", "prefer", "expected"), [
    (1, NOW + 5, "tiny#0", 512),  # returning, pin alive, going home: the pinned context is cached
    (1, NOW - 1, "tiny#0", 0),  # the pin lapsed before the turn came back
    (1, None, "tiny#0", 0),  # no pin was set
    (1, NOW + 5, "tiny#1", 0),  # moved (home down or overloaded): the cache is on the other instance
    (1, NOW + 5, None, 0),  # no preference: it may land anywhere
    (0, NOW + 5, "tiny#0", 0),  # a first turn has nothing cached by its session
], ids=["home", "lapsed", "unpinned", "moved", "anywhere", "first-turn"])
def test_pinned_context(turns: int, deadline: float | None, prefer: str | None, expected: int) -> None:
    assert pinned_context(_turn(turns, deadline), prefer, NOW) == expected
