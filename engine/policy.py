"""Waiting-queue order. A policy gives each request a sort key when it enters the queue; the
smallest key is served first and the largest running request is preempted first. Keys are fixed
while a request waits, so the queue is a heap; aging that grows linearly with waiting time fits
in such a key (score - rate x waited orders like score + rate x arrival)."""

from __future__ import annotations

from typing import Protocol

from engine.rank_policy import RankPolicy
from engine.sequence import Sequence


class SchedulingPolicy(Protocol):
    name: str

    def sort_key(self, seq: Sequence) -> tuple[float, ...]: ...


class FCFSPolicy:
    """First come, first served."""

    name = "fcfs"

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        return (seq.arrival_time,)


class PriorityPolicy:
    """Lower `priority` first, then arrival (vLLM's `priority` semantics)."""

    name = "priority"

    def sort_key(self, seq: Sequence) -> tuple[float, ...]:
        return (seq.priority, seq.arrival_time)


# "rank": the ranker's score with linear aging (engine/rank_policy.py).
POLICIES: dict[str, type] = {"fcfs": FCFSPolicy, "priority": PriorityPolicy, "rank": RankPolicy}

# "program-<name>": returning agent programs first, then <name>'s order (engine/program_policy.py).
from engine.program_policy import program_first  # noqa: E402

POLICIES.update({f"program-{name}": program_first(cls) for name, cls in list(POLICIES.items())})


def make_policy(name: str) -> SchedulingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; known: {sorted(POLICIES)}") from None
