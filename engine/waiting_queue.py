from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from engine.policy import SchedulingPolicy
from engine.sequence import Sequence


class WaitingQueue:
    """Heap of waiting sequences by policy key; removal is lazy."""

    def __init__(self, policy: SchedulingPolicy) -> None:
        self.policy = policy
        self._heap: list[tuple[tuple[float, ...], int, Sequence]] = []
        self._members: dict[str, int] = {}  # request id -> its live heap entry's counter
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._members

    def push(self, seq: Sequence) -> None:
        assert seq.request_id not in self._members
        count = next(self._counter)
        self._members[seq.request_id] = count
        heapq.heappush(self._heap, (self.policy.sort_key(seq), count, seq))

    def _drop_stale(self) -> None:
        while self._heap and self._members.get(self._heap[0][2].request_id) != self._heap[0][1]:
            heapq.heappop(self._heap)

    def peek(self) -> Sequence | None:
        self._drop_stale()
        return self._heap[0][2] if self._heap else None

    def pop(self) -> Sequence:
        self._drop_stale()
        seq = heapq.heappop(self._heap)[2]
        del self._members[seq.request_id]
        return seq

    def remove(self, request_id: str) -> None:
        self._members.pop(request_id, None)

    def __iter__(self) -> Iterator[Sequence]:
        live = [e for e in self._heap if self._members.get(e[2].request_id) == e[1]]
        return (seq for _, _, seq in sorted(live, key=lambda e: (e[0], e[1])))
