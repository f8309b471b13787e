"""Returning programs first: a turn that an agent program sends back after a tool call (it carries
`hints.program_start`) is ordered as if it had arrived when its program started, so it goes ahead of
work that arrived after that start: earliest program first (Continuum's program-level FCFS). The
inner policy supplies the order, so it composes with any of them: under FCFS the key is the program's
start; under priority, (priority, program start); under the ranker's score with linear aging, the
returning turn gets its program's whole age as aging credit. Requests without the hint (new programs,
plain chat) keep the inner policy's key unchanged, so the wrapper changes nothing for them. Under
memory pressure the largest key is preempted first: the newest work gives way before a program
that is midway through."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.policy import SchedulingPolicy
    from engine.sequence import Sequence


# hints.program_start is epoch seconds; a live engine keys arrivals by time.monotonic(), a simulated
# one by its virtual clock (which starts at 0 and is given program starts in its own time). Epoch
# values are recognisable: no monotonic or virtual clock here reaches 10^9 s (31 years).
_EPOCH_THRESHOLD = 1e9


def engine_time(program_start: float, arrival_time: float) -> float:
    if program_start >= _EPOCH_THRESHOLD > arrival_time:
        return program_start - (time.time() - time.monotonic())
    return program_start


class _AsOfProgramStart:
    """The sequence as the inner policy should see it: arrived at its program's start."""

    __slots__ = ("_seq", "arrival_time")

    def __init__(self, seq: Sequence, program_start: float) -> None:
        self._seq = seq
        self.arrival_time = min(engine_time(program_start, seq.arrival_time), seq.arrival_time)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seq, name)


class ProgramFirstPolicy:
    def __init__(self, inner: SchedulingPolicy) -> None:
        self.inner = inner
        self.name = f"program-{inner.name}"

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        start = seq.hints.program_start
        if start is None:
            return self.inner.sort_key(seq)
        return self.inner.sort_key(_AsOfProgramStart(seq, start))  # type: ignore[arg-type]


def program_first(inner_type: type) -> type:
    """A policy class (no-argument constructor, as POLICIES holds) wrapping `inner_type`."""

    class _ProgramFirst(ProgramFirstPolicy):
        def __init__(self) -> None:
            super().__init__(inner_type())

    _ProgramFirst.__name__ = f"ProgramFirst{inner_type.__name__}"
    return _ProgramFirst
