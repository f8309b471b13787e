"""TTL pins: a key (an agent session) holds a reference on KV blocks until its deadline.

The table only tracks who holds what; the block manager takes and drops the block references.
Pins give way earliest deadline first (under memory pressure and when the pin budget is full):
the pin closest to expiring has the least promised reuse time left."""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Pin:
    key: str
    block_ids: list[int]
    deadline: float
    version: int  # bumps on re-pin, so stale heap entries are skipped
    num_tokens: int = 0  # the prefix a next turn finds cached thanks to the pin (with KV groups, not blocks * size)


@dataclass
class PinCounters:
    set: int = 0
    refreshed: int = 0
    expired: int = 0
    evicted: int = 0  # released early: memory pressure or budget
    unpinned: int = 0
    hit_tokens: int = 0  # prefix-cache hit tokens served from pinned blocks


@dataclass
class PinTable:
    pins: dict[str, Pin] = field(default_factory=dict)
    holders: Counter[int] = field(default_factory=Counter)  # block id -> number of pins holding it
    counters: PinCounters = field(default_factory=PinCounters)
    _heap: list[tuple[float, int, str]] = field(default_factory=list)
    _version: int = 0

    def __len__(self) -> int:
        return len(self.pins)

    def __contains__(self, key: str) -> bool:
        return key in self.pins

    @property
    def num_pinned_blocks(self) -> int:
        return len(self.holders)

    def add(self, key: str, block_ids: list[int], deadline: float, num_tokens: int = 0) -> None:
        assert key not in self.pins
        self._version += 1
        self.pins[key] = Pin(key, list(block_ids), deadline, self._version, num_tokens)
        self.holders.update(block_ids)
        heapq.heappush(self._heap, (deadline, self._version, key))

    def remove(self, key: str) -> Pin:
        pin = self.pins.pop(key)
        self.holders.subtract(pin.block_ids)
        for block_id in pin.block_ids:
            if self.holders[block_id] <= 0:
                del self.holders[block_id]
        return pin

    def extend(self, key: str, deadline: float) -> None:
        pin = self.pins[key]
        self._version += 1
        pin.deadline, pin.version = deadline, self._version
        heapq.heappush(self._heap, (deadline, pin.version, key))

    def earliest(self) -> Pin | None:
        """The live pin with the earliest deadline (stale heap entries are dropped on the way)."""
        while self._heap:
            deadline, version, key = self._heap[0]
            pin = self.pins.get(key)
            if pin is not None and pin.version == version:
                return pin
            heapq.heappop(self._heap)
        return None

    def expired_keys(self, now: float) -> list[str]:
        keys = []
        while (pin := self.earliest()) is not None and pin.deadline <= now:
            heapq.heappop(self._heap)
            keys.append(pin.key)
        return keys
