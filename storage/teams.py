"""Team records: create, list, change, delete, add spend. Storage only, no limit policy
(gateway/team_limits.py applies a team's limits to its keys' requests).

A team is deleted only once no active key belongs to it: detaching them silently would free them from
the budget they were given under. Its revoked keys are detached (their team_id set to null) as it goes.
Each change made with an `actor` writes its audit row in the same transaction (storage/audit.py). These
calls do blocking I/O: the gateway runs them in a thread."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import URL, Engine

from storage.audit import Actor, record
from storage.db import as_engine, session_factory
from storage.keys import check_limits, check_mcp_servers
from storage.models import ApiKey, Team
from storage.spend import add_spend

# What a team's owner may set or change (`metadata`: OpenAI's, pairs of strings).
TEAM_FIELDS = ("name", "rpm_limit", "tpm_limit", "budget_usd", "budget_period", "models", "priority", "metadata",
               "mcp_servers")
_NOT_CHECKED = ("metadata", "mcp_servers")  # checked on their own, not by _check


class TeamHasKeysError(Exception):
    """The team still has active keys; revoke them or move them to another team (or none) first."""

    def __init__(self, team_id: str, keys: int) -> None:
        super().__init__(f"team {team_id!r} has {keys} active key{'s' if keys != 1 else ''}: revoke them or move "
                         "them to another team (PATCH /v1/keys/{id} with team_id) before deleting it")
        self.keys = keys


class TeamStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._session = session_factory(self._engine)

    def create(self, name: str, rpm_limit: int | None = None, tpm_limit: int | None = None,
               budget_usd: float | None = None, budget_period: str | None = None, models: list[str] | None = None,
               priority: float | None = None, metadata: dict[str, str] | None = None,
               actor: Actor | None = None, mcp_servers: list[str] | None = None) -> Team:
        """A new team; ValueError, starting with the field's name, for a limit no request could meet."""
        _check(name, rpm_limit, tpm_limit, budget_usd, budget_period, models, priority)
        check_mcp_servers(mcp_servers)
        team = Team(name=name, rpm_limit=rpm_limit, tpm_limit=tpm_limit, budget_usd=budget_usd,
                    budget_period=budget_period, models=list(dict.fromkeys(models)) if models is not None else None,
                    priority=priority, metadata_=metadata or None, spent_usd=0.0,
                    mcp_servers=list(dict.fromkeys(mcp_servers)) if mcp_servers is not None else None)
        with self._session.begin() as session:
            session.add(team)
            session.flush()
            record(session, actor, "team.created", team.id, {"id": team.id, "data": {
                "name": name, "rpm_limit": rpm_limit, "tpm_limit": tpm_limit, "budget_usd": budget_usd,
                "budget_period": budget_period, "models": team.models, "priority": priority, "metadata": metadata,
                "mcp_servers": team.mcp_servers}})
        return team

    def get(self, team_id: str) -> Team | None:
        with self._session() as session:
            return session.get(Team, team_id)

    def list(self) -> list[Team]:
        with self._session() as session:
            return list(session.scalars(select(Team).order_by(Team.created_at, Team.id)))

    def key_counts(self) -> dict[str, int]:
        """Each team's active keys, by team id (teams without any are absent)."""
        query = (select(ApiKey.team_id, func.count()).where(ApiKey.team_id.is_not(None), ApiKey.revoked_at.is_(None))
                 .group_by(ApiKey.team_id))
        with self._session() as session:
            return {team_id: count for team_id, count in session.execute(query)}

    def update(self, team_id: str, actor: Actor | None = None, **fields: Any) -> Team:
        """Change any of TEAM_FIELDS (None lifts a limit; `name` must stay a name); the updated team.
        KeyError if there is none, ValueError for a field that cannot be met."""
        unknown = set(fields) - set(TEAM_FIELDS)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]} is not a team's field")
        with self._session.begin() as session:
            team = session.get(Team, team_id)
            if team is None:
                raise KeyError(f"no team with id {team_id!r}")
            merged = {name: getattr(team, name) for name in TEAM_FIELDS if name not in _NOT_CHECKED}
            merged |= {name: value for name, value in fields.items() if name not in _NOT_CHECKED}
            _check(**merged)
            check_mcp_servers(fields.get("mcp_servers"))
            if fields.get("models") is not None:
                fields["models"] = list(dict.fromkeys(fields["models"]))
            previous = {name: team.metadata_ if name == "metadata" else getattr(team, name) for name in fields}
            record(session, actor, "team.updated", team_id,
                   {"id": team_id, "changes_requested": dict(fields), "previous": previous})
            if "metadata" in fields:
                team.metadata_ = fields.pop("metadata") or None
            for name, value in fields.items():
                setattr(team, name, value)
        return team

    def delete(self, team_id: str, actor: Actor | None = None) -> Team:
        """Delete the team; KeyError if there is none, TeamHasKeysError while an active key belongs to it.
        Its row is locked first (FOR UPDATE), so a key being given to it meanwhile waits and then finds
        no team (storage/keys.py)."""
        with self._session.begin() as session:
            team = session.get(Team, team_id, with_for_update=True)
            if team is None:
                raise KeyError(f"no team with id {team_id!r}")
            active = session.scalar(select(func.count()).where(ApiKey.team_id == team_id,
                                                               ApiKey.revoked_at.is_(None)))
            if active:
                raise TeamHasKeysError(team_id, active)
            session.execute(update(ApiKey).where(ApiKey.team_id == team_id).values(team_id=None))
            session.delete(team)
            record(session, actor, "team.deleted", team_id, {"id": team_id, "name": team.name})
        return team

    def add_spend(self, team_id: str, usd: float, period: int | None = None) -> None:
        """Atomic increment, as a key's (storage/spend.py); the gateway's goes with the outcome rows."""
        add_spend(self._engine, Team, team_id, usd, period)


def _check(name: str, rpm_limit: int | None, tpm_limit: int | None, budget_usd: float | None,
           budget_period: str | None, models: list[str] | None, priority: float | None) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name must be a non-empty string")
    check_limits(rpm_limit, budget_usd, models, priority, budget_period, tpm_limit)
