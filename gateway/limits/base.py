"""The per-key limits contract: requests per minute (sliding window) and a USD budget.

Semantics shared by every implementation:
- RPM: a request is admitted when fewer than `rpm_limit` requests were admitted in the last `window_s`
  seconds (an admission exactly `window_s` old no longer counts). Rejected requests take no slot.
- Budget: a request is admitted while spent + held < budget, where `held` sums what the key's requests
  in flight may still cost: each admitted request holds its own worst case (`hold_usd`, under `hold_id`)
  until `settle` releases the hold and adds what it really cost. So the overshoot is at most one
  request's own cost, however many run at once (without holds it was every request in flight). A hold
  not settled (its replica died) lapses after `hold_ttl_s`. A refusal is "budget" when spent alone has
  reached the budget, "budget_held" when holds fill the rest (retry once requests finish).
- TPM: a request is admitted while the tokens (prompt + completion) its key's requests used in the last
  `window_s` seconds are below `tpm_limit`, each request's counted when it ends (`record_tokens`), as
  litellm counts them. So a request admitted just below the limit may take the window past it by its own
  size (with several in flight, by theirs): the limit stops the next ones until enough tokens age out.
  `retry_after_s` says when the window's oldest tokens do (the first moment any free; more may have to).
  A rejected request records nothing.
- The budget is checked first, then tokens, then the request rate: a request rejected for budget or
  tokens does not consume rate.
- A subject is whatever `key_id` names: an API key's id, or "team:<id>" for the team its keys share
  (gateway/limit_gate.py admits a request against both, and `release`s the first where the second refuses).
- Money is counted in integer nano-USD, so that 20 x $0.05 reaches a $1.00 budget exactly (floats drift).
- A budget with a period (gateway/limits/periods.py) counts the spend and holds of that period only:
  `period` (its start, Unix seconds) names which total a call reads or adds to; None is the key's
  lifetime total. A request is settled into the period it was admitted in (its hold carries it).

HTTP mapping (done by the gateway's HTTP layer): "rate_limit", "token_limit" and "budget" are 429s, "limits_unavailable"
is a 503 when admission was refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

LimitReason = Literal["rate_limit", "token_limit", "budget", "budget_held", "limits_unavailable"]
DEFAULT_HOLD_TTL_S = 900.0  # past any request's timeout (server.request_timeout_s, 600 s by default)
HELD_RETRY_AFTER_S = 1.0

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
    unset or unknown (the budget's is net of holds); `retry_after_s` is set for rate limits and holds
    (waiting does not refill a spent budget).
    """

    allowed: bool
    reason: LimitReason | None = None
    retry_after_s: float | None = None
    remaining_requests: int | None = None
    remaining_budget_usd: float | None = None
    remaining_tokens: int | None = None
    slot: str | None = None  # the rate-window entry an admission took, for `release`
    # The limits `remaining_*` are of, for the answer's headers: set by the gateway (gateway/limit_gate.py)
    # to the key's, or its team's where that one leaves less; a limiter leaves them None.
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget_usd: float | None = None
    budget_renews_at: int | None = None  # Unix seconds, for a budget with a period


@dataclass(frozen=True, slots=True)
class Hold:
    """What an admitted request holds of its key's budget until it is settled."""

    hold_id: str
    usd: float
    ttl_s: float = DEFAULT_HOLD_TTL_S
    period: int | None = None  # the budget period it was taken in (None: a lifetime budget)


class Limiter(Protocol):
    async def admit(
        self, key_id: str, rpm_limit: int | None, budget_usd: float | None, now: float | None = None,
        hold: Hold | None = None, period: int | None = None, tpm_limit: int | None = None,
    ) -> Admission:
        """Decide and, when admitted, take a rate slot and (with a budget) the hold, against `period`'s
        spend. `now` is for tests and simulation only."""
        ...

    async def release(self, key_id: str, admission: Admission, hold: Hold | None = None) -> None:
        """Undo an admission whose request goes no further (its key's team refused it): its rate slot and
        its hold given back, as if it had not been admitted. Never raises for an unreachable backend (the
        slot then ages out of the window, the hold lapses)."""
        ...

    async def record_tokens(self, key_id: str, tokens: int, now: float | None = None) -> None:
        """Count a finished request's tokens in its key's token window. Never raises for an unreachable
        backend (they go uncounted: a token rate is soft state)."""
        ...

    async def record_spend(self, key_id: str, usd: float, period: int | None = None) -> None:
        """Add a completed request's cost. Never raises for an unreachable backend."""
        ...

    async def settle(self, key_id: str, hold_id: str, usd: float, period: int | None = None) -> float | None:
        """Release a hold and add what its request cost, in one step; the spend total it made (None where
        the backend was unreachable). Never raises for an unreachable backend (the hold lapses then, and
        the spend is added later). One addition makes each total, so one settle sees a total cross a
        given amount, on any number of replicas (gateway/budget_alerts.py relies on it)."""
        ...

    async def spent(self, key_id: str, period: int | None = None) -> float: ...

    async def set_spent(self, key_id: str, usd: float, period: int | None = None) -> None:
        """Replace the spent amount, e.g. seeded from the database at start."""
        ...

    async def close(self) -> None: ...
