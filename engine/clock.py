from __future__ import annotations

import time


class WallClock:
    """Real time. `advance` sleeps: a simulated runner served live takes its modelled step time."""

    virtual = False

    def now(self) -> float:
        return time.monotonic()

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Simulated time: steps and idle gaps move it forward instantly."""

    virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self._now += seconds

    def advance_to(self, t: float) -> None:
        self._now = max(self._now, t)


Clock = WallClock | VirtualClock
