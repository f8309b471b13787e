"""What a caller knows about a request that the waiting-queue policy may use. The gateway fills it
(the ranker's score, the agent program's start) and passes it to in-process engines, to Pitstop
engine servers as request fields, and to the admission queue; policies read it from the request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulingHints:
    # Predicted output-length rank (rankers/): lower means expected shorter. None: not ranked.
    rank_score: float | None = None
    # Wall-clock time (seconds since the epoch) the request's agent program started; set on a
    # program's returning turns so they can go ahead of newly arrived programs.
    program_start: float | None = None
    # The request is a turn of an agent program (it offers tools, or returns after a tool call).
    # Requests that are not get the program-first policy's interactive credit (engine/program_policy.py).
    in_program: bool = False


NO_HINTS = SchedulingHints()
