"""How long an agent program is away on a tool call, learned per tool name (and per agent).

Each key keeps an empirical distribution of observed gaps (a turn's end to the next turn's arrival).
Keys back off along agent+tool -> tool -> all tools -> a log-normal cold-start prior: a level with n
samples is blended with its parent as (n F_own + w F_parent) / (n + w), so a new tool starts at the
pooled distribution and moves to its own as it is seen. A turn that asked for several tools is
keyed by the sorted set of names (they may run one after another or in parallel)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

ALL = "*"
_erfc = np.vectorize(math.erfc, otypes=[float])


def tool_key(names: list[str]) -> str:
    return "+".join(sorted(set(names))) if names else ALL


@dataclass
class Prior:
    median_s: float = 1.0
    sigma: float = 1.2  # log-space spread: the 90% range is median x/ 7

    def cdf(self, t: np.ndarray) -> np.ndarray:
        # The log-normal CDF, as scipy.stats.lognorm.cdf(t, s=sigma, scale=median) (scipy is a second to import).
        z = (np.log(np.maximum(t, 1e-300)) - math.log(self.median_s)) / (self.sigma * math.sqrt(2.0))
        return np.where(np.asarray(t) > 0, 0.5 * _erfc(-z), 0.0)


@dataclass
class ToolDurationEstimator:
    prior: Prior = field(default_factory=Prior)
    backoff_weight: float = 5.0  # pseudo-samples of the parent level
    max_samples: int = 512  # per key: recent behaviour wins, memory stays bounded
    samples: dict[str, deque[float]] = field(default_factory=dict)
    _sorted: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def observe(self, tool_names: list[str], duration_s: float, agent: str | None = None) -> None:
        if not math.isfinite(duration_s) or duration_s < 0:
            return
        tool = tool_key(tool_names)
        keys = {ALL, tool} | ({f"{agent}/{tool}"} if agent else set())
        for key in keys:
            self.samples.setdefault(key, deque(maxlen=self.max_samples)).append(duration_s)
            self._sorted.pop(key, None)

    def count(self, key: str) -> int:
        return len(self.samples.get(key, ()))

    def _empirical(self, key: str, t: np.ndarray) -> tuple[int, np.ndarray]:
        data = self._sorted.get(key)
        if data is None:
            data = self._sorted[key] = np.sort(np.fromiter(self.samples.get(key, ()), float))
        if not len(data):
            return 0, np.zeros_like(t)
        return len(data), np.searchsorted(data, t, side="right") / len(data)

    def cdf(self, t: np.ndarray | list[float], tool_names: list[str], agent: str | None = None) -> np.ndarray:
        """P(the program is back within t seconds), for each t."""
        t = np.asarray(t, dtype=float)
        tool = tool_key(tool_names)
        chain = [ALL] + ([tool] if tool != ALL else []) + ([f"{agent}/{tool}"] if agent else [])
        value = self.prior.cdf(t)
        w = self.backoff_weight
        for key in chain:
            n, own = self._empirical(key, t)
            value = (n * own + w * value) / (n + w)
        return value

    def support(self, tool_names: list[str], agent: str | None = None) -> np.ndarray:
        """Observed durations for the keys a prediction uses: where the CDF steps up."""
        tool = tool_key(tool_names)
        keys = [tool] + ([f"{agent}/{tool}"] if agent else [])
        if not any(self.count(k) for k in keys):
            keys.append(ALL)
        values = [v for k in keys for v in self.samples.get(k, ())]
        return np.unique(np.asarray(values, dtype=float))

    def to_dict(self) -> dict:
        return {"prior": {"median_s": self.prior.median_s, "sigma": self.prior.sigma},
                "backoff_weight": self.backoff_weight, "max_samples": self.max_samples,
                "samples": {k: list(v) for k, v in self.samples.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> ToolDurationEstimator:
        est = cls(Prior(**data.get("prior", {})), float(data.get("backoff_weight", 5.0)),
                  int(data.get("max_samples", 512)))
        for key, values in data.get("samples", {}).items():
            est.samples[key] = deque((float(v) for v in values), maxlen=est.max_samples)
        return est
