"""The per-key limits contract: requests per minute (sliding window) and a USD budget.

Semantics shared by every implementation:
- RPM: a request is admitted when fewer than `rpm_limit` requests were admitted in the last `window_s`
  seconds (an admission exactly `window_s` old no longer counts). Rejected requests take no slot.
- Budget: a request is admitted while spent < budget. Spend is recorded after the request completes, so
  the overshoot is bounded by the requests already in flight when the budget was reached.
- The budget is checked first: a request rejected for budget does not consume rate.
- Money is counted in integer nano-USD, so that 20 x $0.05 reaches a $1.00 budget exactly (floats drift).

HTTP mapping (done by the gateway's HTTP layer): "rate_limit" and "budget" are 429s, "limits_unavailable"
is a 503 when admission was refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

LimitReason = Literal["rate_limit", "budget", "limits_unavailable"]

NANOUSD_PER_USD = 1_000_000_000


def usd_to_nanousd(usd: float) -> int:
    if not math.isfinite(usd):
        raise ValueError(f"USD amount must be finite, got {usd!r}")
    return round(usd * NANOUSD_PER_USD)


def nanousd_to_usd(nanousd: int) -> float:
    return nanousd / NANOUSD_PER_USD


class LimitsUnavailableError(Exception):
    """The shared limits state cannot be reached (raised by `spent`/`set_spent`, never by `admit`)."""


@dataclass(frozen=True, slots=True)
class Admission:
    """One admission decision.

    `reason` says why the request was refused; on a fail-open admission (allowed=True) it is
    "limits_unavailable", saying limits were not enforced. `remaining_*` are None when that limit is
    unset or unknown; `retry_after_s` is set for rate limits only (waiting does not refill a budget).
    """

    allowed: bool
    reason: LimitReason | None = None
    retry_after_s: float | None = None
    remaining_requests: int | None = None
    remaining_budget_usd: float | None = None


class Limiter(Protocol):
    async def admit(
        self, key_id: str, rpm_limit: int | None, budget_usd: float | None, now: float | None = None
    ) -> Admission:
        """Decide and, when admitted, take a rate slot. `now` is for tests and simulation only."""
        ...

    async def record_spend(self, key_id: str, usd: float) -> None:
        """Add a completed request's cost. Never raises for an unreachable backend."""
        ...

    async def spent(self, key_id: str) -> float: ...

    async def set_spent(self, key_id: str, usd: float) -> None:
        """Replace the spent amount, e.g. seeded from the database at start."""
        ...

    async def close(self) -> None: ...
