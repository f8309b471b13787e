"""A key's team as its requests see it (storage/models/teams.py): limits that bound all the team's keys
together, beside each key's own. The limiters count a team as one more subject, "team:<id>", with the
same implementation as keys (gateway/limits/); gateway/limit_gate.py admits a request against both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from engine.server.errors import APIError
from gateway.access_config import TeamDefaults
from gateway.limits.periods import BudgetPeriod
from gateway.wildcards import name_matches
from storage.models import Team

SUBJECT_PREFIX = "team:"  # a team's name in the limiters and in key change events (gateway/key_events.py)


@dataclass(frozen=True)
class TeamLimits:
    team_id: str
    name: str
    rpm_limit: int | None = None
    tpm_limit: int | None = None  # tokens (prompt + completion) a minute, all its keys' together
    budget_usd: float | None = None
    budget_period: BudgetPeriod | None = None
    models: frozenset[str] | None = None  # what its keys may use (None: anything); a key's own list narrows it
    spent_usd: float = 0.0  # as stored when the key was looked up: seeds the limiter after a restart
    period_start: int | None = None
    period_spent_usd: float = 0.0
    mcp_servers: frozenset[str] | None = None  # the MCP servers its keys may reach at /mcp (None: all)

    @classmethod
    def of(cls, team: Team, defaults: TeamDefaults | None = None) -> TeamLimits:
        """The team's limits, each it sets none of taken from `defaults` (the config's `limits.team_defaults`)."""
        d = defaults or TeamDefaults()
        return cls(team.id, team.name, team.rpm_limit if team.rpm_limit is not None else d.rpm,
                   team.tpm_limit if team.tpm_limit is not None else d.tpm,
                   team.budget_usd if team.budget_usd is not None else d.budget_usd,
                   cast("BudgetPeriod | None", team.budget_period or d.budget_period),
                   frozenset(team.models) if team.models is not None else None, team.spent_usd or 0.0,
                   team.period_start, team.period_spent_usd or 0.0,
                   frozenset(team.mcp_servers) if team.mcp_servers is not None else None)

    @property
    def subject(self) -> str:
        """What the limiters count the team's requests under."""
        return SUBJECT_PREFIX + self.team_id

    @property
    def limited(self) -> bool:
        return self.rpm_limit is not None or self.tpm_limit is not None or self.budget_usd is not None

    @property
    def label(self) -> str:
        """How messages name it."""
        return f"this API key's team {self.name!r} ({self.team_id})"

    def stored_spend(self, period: int | None) -> float:
        """What the database had the team spend in `period` (its lifetime where None) when it was read."""
        if period is None:
            return self.spent_usd
        return self.period_spent_usd if self.period_start == period else 0.0

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models or any(
            name_matches(allowed, model) for allowed in self.models if "*" in allowed)

    def check_model(self, model: str) -> None:
        """A 403 naming the team and what it may use, before the request takes a rate slot."""
        if not self.may_use(model):
            allowed = ", ".join(sorted(self.models or ()))
            raise APIError(403, f"{self.label} may not use {model!r}; it may use: {allowed}", "model",
                           "model_not_allowed")
