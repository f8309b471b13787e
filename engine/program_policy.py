"""Returning programs first: a turn that an agent program sends back after a tool call (it carries
`hints.program_start`) is ordered as if it had arrived when its program started, so it goes ahead of
work that arrived after that start: earliest program first (Continuum's program-level FCFS). The
inner policy supplies the order, so it composes with any of them: under FCFS the key is the program's
start; under priority, (priority, program start); under the ranker's score with linear aging, the
returning turn gets its program's whole age as aging credit. A program's first turn
(`hints.in_program`, no start yet) keeps the inner policy's key.

Interactive requests (not part of any agent program: plain chat) are ordered as if they had arrived
`interactive_credit_s` earlier. Without that credit every running program's turns, however old the
program, go ahead of them, and a busy agent fleet starves chat. The credit bounds both sides: an
interactive request waits behind no program that started less than the credit before it arrived,
and a program's turns are overtaken only by interactive requests that arrive within the credit after
the program started, so a chat flood cannot starve agents either. Requests all of one kind (an
engine serving only chat) are shifted alike: their order is the inner policy's. Under memory
pressure the largest key is preempted first: the newest work gives way before a program that is
midway through."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.policy import SchedulingPolicy
    from engine.sequence import Sequence


# Longer than an agent program usually runs (SWE-agent programs take minutes), so that interactive
# requests go ahead of every program that is running when they arrive.
DEFAULT_INTERACTIVE_CREDIT_S = 300.0

# hints.program_start is epoch seconds; a live engine keys arrivals by time.monotonic(), a simulated
# one by its virtual clock (which starts at 0 and is given program starts in its own time). Epoch
# values are recognisable: no monotonic or virtual clock here reaches 10^9 s (31 years).
_EPOCH_THRESHOLD = 1e9


def engine_time(program_start: float, arrival_time: float) -> float:
    if program_start >= _EPOCH_THRESHOLD > arrival_time:
        return program_start - (time.time() - time.monotonic())
    return program_start


class _Arrived:
    """The sequence as the inner policy should see it: arrived at `arrival_time`."""

    __slots__ = ("_seq", "arrival_time")

    def __init__(self, seq: Sequence, arrival_time: float) -> None:
        self._seq = seq
        self.arrival_time = arrival_time

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seq, name)


class ProgramFirstPolicy:
    def __init__(self, inner: SchedulingPolicy, interactive_credit_s: float = DEFAULT_INTERACTIVE_CREDIT_S) -> None:
        assert interactive_credit_s >= 0
        self.inner = inner
        self.interactive_credit_s = interactive_credit_s
        self.name = f"program-{inner.name}"

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        start = seq.hints.program_start
        if start is not None:  # a returning turn: as of its program's start
            arrived = min(engine_time(start, seq.arrival_time), seq.arrival_time)
        elif seq.hints.in_program:  # a program's first turn
            return self.inner.sort_key(seq)
        else:  # interactive
            arrived = seq.arrival_time - self.interactive_credit_s
        return self.inner.sort_key(_Arrived(seq, arrived))  # type: ignore[arg-type]


def program_first(inner_type: type) -> type:
    """A policy class (no-argument constructor, as POLICIES holds) wrapping `inner_type`."""

    class _ProgramFirst(ProgramFirstPolicy):
        def __init__(self) -> None:
            super().__init__(inner_type())

    _ProgramFirst.__name__ = f"ProgramFirst{inner_type.__name__}"
    return _ProgramFirst
