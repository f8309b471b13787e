"""A session's turn from start to end, without HTTP: the gateway (gateway/sessions.py) and the
benchmark drive the same object.

begin(): load the state, read the turn's shape from the messages, learn the tool gap it closes and
say whether it is a returning turn (its program start becomes the scheduling hint). end(): count the
turn, remember where its KV lives, judge the previous pin (hit, expired, evicted) and choose the TTL
for the pin the engine already set provisionally at the turn's finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent_sessions.affinity import Affinity, AffinityRule, InstanceLoad
from agent_sessions.identity import TurnShape, agent_of, turn_shape
from agent_sessions.state import SessionState, TurnRecord
from agent_sessions.store import SessionStore
from agent_sessions.ttl_policy import EngineCosts, TTLDecision, TTLPolicy, TurnEnd
from storage.redis_state import StateUnavailableError

log = logging.getLogger("pitstop.sessions")


@dataclass
class Turn:
    session_id: str
    state: SessionState
    shape: TurnShape
    arrived: float
    tool_wait_s: float | None  # the gap this turn closes (None on a first turn)
    tools_answered: list[str]
    previous_instance: str | None
    affinity: Affinity | None = None

    @property
    def returning(self) -> bool:
        return self.state.turns > 0

    @property
    def program_start(self) -> float | None:
        """The scheduling hint: set on returning turns only, so new programs keep their own order."""
        return self.state.program_start if self.returning else None


@dataclass(frozen=True)
class TurnOutcome:
    decision: TTLDecision
    turn_number: int
    moved: bool
    previous_pin: str | None  # "hit", "expired", "evicted" or None (no pin was held)


class SessionManager:
    def __init__(self, store: SessionStore, policy: TTLPolicy, affinity: AffinityRule | None = None,
                 provisional_ttl_s: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy
        self.affinity_rule = affinity or AffinityRule()
        self.provisional_ttl_s = provisional_ttl_s
        self.clock = clock

    @property
    def estimator(self):  # noqa: ANN201  (ToolDurationEstimator; kept short for callers)
        return self.policy.estimator

    async def load(self, session_id: str) -> SessionState | None:
        try:
            return await self.store.get(session_id)
        except StateUnavailableError as exc:
            log.warning("session store unavailable, serving %s without its state: %s", session_id, exc)
            return None

    async def save(self, state: SessionState) -> None:
        try:
            await self.store.put(state)
        except StateUnavailableError as exc:
            log.warning("session store unavailable, state of %s not saved: %s", state.session_id, exc)

    async def begin(self, session_id: str, body: dict, now: float | None = None) -> Turn:
        now = self.clock() if now is None else now
        state = await self.load(session_id)
        if state is None:
            state = SessionState(session_id, program_start=now, agent=agent_of(body))
        shape = turn_shape(body)
        wait, tools = None, shape.tools_answered or state.pending_tools
        if state.turns > 0 and state.last_turn_end is not None:
            wait = max(0.0, now - state.last_turn_end)
            if shape.returning or state.pending_tools:  # a tool gap, not a human thinking
                self.estimator.observe(tools, wait, state.agent)
                state.returns += 1
        return Turn(session_id, state, shape, now, wait, tools if wait is not None else [], state.instance)

    def place(self, turn: Turn, instances: list[InstanceLoad]) -> Affinity:
        turn.affinity = self.affinity_rule.choose(turn.state.instance, instances)
        return turn.affinity

    async def end(self, turn: Turn, instance: str | None, model: str | None, prompt_tokens: int,
                  completion_tokens: int, cached_tokens: int, response_tools: list[str], costs: EngineCosts,
                  now: float | None = None) -> TurnOutcome:
        now = self.clock() if now is None else now
        state = turn.state
        moved = turn.previous_instance is not None and instance != turn.previous_instance
        previous_pin = self._judge_pin(state, turn.arrived, cached_tokens, moved)
        state.turns += 1
        state.moves += int(moved)
        state.instance, state.model = instance, model or state.model
        state.last_turn_end = now
        state.context_tokens = prompt_tokens + completion_tokens
        state.pending_tools = list(response_tools)
        decision = self.policy.choose(TurnEnd(
            context_tokens=state.context_tokens, turns_done=state.turns, returns=state.returns,
            tool_names=list(response_tools), tool_calls_seen=bool(response_tools),
            declares_tools=turn.shape.declares_tools, agent=state.agent), costs)
        state.pin_ttl_s = decision.ttl_s
        state.pin_deadline = now + decision.ttl_s if decision.ttl_s > 0 else None
        state.record(TurnRecord(state.turns, instance, prompt_tokens, cached_tokens, turn.tool_wait_s,
                                decision.ttl_s, moved))
        return TurnOutcome(decision, state.turns, moved, previous_pin)

    @staticmethod
    def _judge_pin(state: SessionState, arrived: float, cached_tokens: int, moved: bool) -> str | None:
        if state.pin_deadline is None or state.pinned_tokens <= 0:
            return None
        if arrived > state.pin_deadline:
            return "expired"
        return "hit" if not moved and cached_tokens >= state.pinned_tokens else "evicted"
