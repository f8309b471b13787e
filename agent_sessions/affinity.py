"""Where a session's next turn goes: the instance holding its KV, unless that instance is down or far
more loaded than another one (then re-prefilling elsewhere is cheaper than waiting there)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceLoad:
    name: str
    available: bool  # not cooling down after failures, engine alive
    outstanding: int  # requests in flight


@dataclass(frozen=True)
class Affinity:
    prefer: str | None  # the instance to send to first; None: least loaded
    reason: str  # "home", "new", "home_down", "home_overloaded"


@dataclass(frozen=True)
class AffinityRule:
    # Move when home has this many more requests in flight than the least loaded instance, and
    # at least `overload_ratio` times as many: a small lead is worth the saved prefill.
    overload_slack: int = 8
    overload_ratio: float = 3.0

    def choose(self, home: str | None, instances: list[InstanceLoad]) -> Affinity:
        if home is None:
            return Affinity(None, "new")
        by_name = {i.name: i for i in instances}
        here = by_name.get(home)
        if here is None or not here.available:
            return Affinity(None, "home_down")
        others = [i.outstanding for i in instances if i.available and i.name != home]
        if others:
            least = min(others)
            if here.outstanding - least >= self.overload_slack and here.outstanding >= self.overload_ratio * max(1, least):
                return Affinity(None, "home_overloaded")
        return Affinity(home, "home")
