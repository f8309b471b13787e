"""One agent program's state as the gateway sees it: where its KV lives, how many turns it has had,
when its last turn ended and which tools it was waiting for. Plain data, stored as JSON (in
process or in Redis), so any gateway replica can serve the program's next turn."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# Per-turn history kept in the state (GET /v1/sessions/{id}); older turns are dropped.
MAX_TURN_HISTORY = 64


@dataclass
class TurnRecord:
    turn: int
    instance: str | None
    prompt_tokens: int
    cached_tokens: int
    tool_wait_s: float | None  # the gap before this turn (tool time as the gateway saw it)
    pin_ttl_s: float  # TTL chosen when this turn ended (0: not pinned)
    moved: bool = False


@dataclass
class SessionState:
    session_id: str
    program_start: float  # wall clock (epoch seconds) of the first turn's arrival
    agent: str | None = None
    model: str | None = None  # the model that holds the KV (a route group's choice sticks)
    instance: str | None = None  # deployment name holding the KV
    turns: int = 0  # turns finished
    returns: int = 0  # turns that came back after a tool call (for P(return))
    last_turn_end: float | None = None
    context_tokens: int = 0  # prompt + completion tokens of the last turn: the KV worth keeping
    pending_tools: list[str] = field(default_factory=list)  # tool names the last turn asked for
    pin_ttl_s: float = 0.0  # TTL chosen at the last turn end
    pin_deadline: float | None = None  # wall clock
    pinned_tokens: int = 0  # tokens the engine reported pinned at the last turn end
    moves: int = 0
    history: list[TurnRecord] = field(default_factory=list)

    def record(self, turn: TurnRecord) -> None:
        self.history.append(turn)
        del self.history[:-MAX_TURN_HISTORY]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> SessionState:
        data = json.loads(raw)
        data["history"] = [TurnRecord(**t) for t in data.get("history", ())]
        return cls(**data)

    def public(self, now: float) -> dict:
        """The body of GET /v1/sessions/{id} (the engine's live view is added by the gateway)."""
        remaining = max(0.0, self.pin_deadline - now) if self.pin_deadline else 0.0
        return {"id": self.session_id, "object": "session", "agent": self.agent, "model": self.model,
                "instance": self.instance, "turns": self.turns, "program_start": self.program_start,
                "last_turn_end": self.last_turn_end, "context_tokens": self.context_tokens,
                "pending_tools": self.pending_tools, "pin_ttl_s": self.pin_ttl_s,
                "pin_ttl_remaining_s": remaining, "moves": self.moves,
                "turn_history": [asdict(t) for t in self.history],
                "cached_tokens_per_turn": [t.cached_tokens for t in self.history]}
