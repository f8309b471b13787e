"""API key records: create, list, revoke, look up by secret, add spend. Storage only, no limit policy. A
key may belong to a team (storage/teams.py), whose limits bound its requests beside its own. A key may
expire (`expires_at`), and its secret may be rotated: the old one keeps working through a grace period.
Each change made with an `actor` writes its audit row in the same transaction (storage/audit.py).

Only the sha256 of a secret is stored, so lookup is an indexed equality on the hash (no timing leak
to guard against) and a database dump reveals no usable key. These calls do blocking I/O: the
gateway should cache lookups or run them in a thread, never call them on the event loop directly.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from storage.audit import Actor, record
from storage.db import as_engine, session_factory
from storage.models import ApiKey, Team, utc_now
from storage.spend import add_spend

BUDGET_PERIODS = ("day", "week", "month")
# What a key's owner may change: its own limits, its team (whose limits bound it too), its expiry.
LIMITS = ("rpm_limit", "budget_usd", "models", "priority", "budget_period", "tpm_limit", "team_id", "expires_at",
          "mcp_servers")
_NOT_CHECKED = ("team_id", "expires_at", "mcp_servers")  # checked on their own, not by check_limits
SECRET_PREFIX = "sk-pitstop-"
DISPLAY_PREFIX_CHARS = len(SECRET_PREFIX) + 6  # "sk-pitstop-AbC123": enough to tell keys apart


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    def __init__(self, engine: Engine | str | URL) -> None:
        self._engine = as_engine(engine)
        self._session = session_factory(self._engine)

    def create(
        self, name: str, rpm_limit: int | None = None, budget_usd: float | None = None,
        models: list[str] | None = None, priority: float | None = None, budget_period: str | None = None,
        tpm_limit: int | None = None, team_id: str | None = None, expires_at: int | None = None,
        actor: Actor | None = None, mcp_servers: list[str] | None = None,
    ) -> tuple[str, str]:
        """A new key; returns (key_id, secret). The secret is shown once and never stored. `models`: the
        model names and route groups it may use (None: all); `priority`: its requests' default and most
        urgent priority (lower goes first; None: any); `team_id`: the team it belongs to (ValueError if
        there is none such); `expires_at`: when it stops working (Unix seconds, in the future; None: never);
        `mcp_servers`: the MCP servers it may reach at /mcp (None: all)."""
        check_limits(rpm_limit, budget_usd, models, priority, budget_period, tpm_limit)
        check_expiry(expires_at)
        check_mcp_servers(mcp_servers)
        secret = new_secret()
        key = ApiKey(
            name=name,
            key_hash=hash_secret(secret),
            prefix=secret[:DISPLAY_PREFIX_CHARS],
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            budget_usd=budget_usd,
            spent_usd=0.0,
            models=list(dict.fromkeys(models)) if models is not None else None,
            priority=priority,
            budget_period=budget_period,
            team_id=team_id,
            expires_at=expires_at,
            mcp_servers=list(dict.fromkeys(mcp_servers)) if mcp_servers is not None else None,
        )
        with self._session.begin() as session:
            _check_team(session, team_id)
            session.add(key)
            session.flush()
            key_id = key.id
            record(session, actor, "api_key.created", key_id,
                   {"id": key_id, "data": {"name": name, "prefix": key.prefix,
                                           **{field: getattr(key, field) for field in LIMITS}}})
        return key_id, secret

    def update(self, key_id: str, actor: Actor | None = None, **limits: Any) -> ApiKey:
        """Change any of `rpm_limit`, `tpm_limit`, `budget_usd`, `models`, `priority`, `budget_period` (None lifts it)
        or `team_id` (None: no team); the updated key. KeyError if there is none, ValueError for a limit
        that cannot be met or a team that does not exist. Its audit row names each field asked for, old and new."""
        unknown = set(limits) - set(LIMITS)
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]} is not a key's limit")
        with self._session.begin() as session:
            key = session.get(ApiKey, key_id)
            if key is None:
                raise KeyError(f"no API key with id {key_id!r}")
            merged = {name: getattr(key, name) for name in LIMITS if name not in _NOT_CHECKED}
            merged |= {name: value for name, value in limits.items() if name not in _NOT_CHECKED}
            check_limits(**merged)
            check_expiry(limits.get("expires_at"))
            check_mcp_servers(limits.get("mcp_servers"))
            if "team_id" in limits:
                _check_team(session, limits["team_id"])
            if limits.get("models") is not None:
                limits["models"] = list(dict.fromkeys(limits["models"]))
            previous = {name: getattr(key, name) for name in limits}
            for name, value in limits.items():
                setattr(key, name, value)
            record(session, actor, "api_key.updated", key_id,
                   {"id": key_id, "changes_requested": limits, "previous": previous})
        return key

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        with self._session() as session:
            return list(session.scalars(query))

    def get(self, key_id: str) -> ApiKey | None:
        with self._session() as session:
            return session.get(ApiKey, key_id)

    def revoke(self, key_id_or_prefix: str, actor: Actor | None = None) -> ApiKey:
        """Revoke the key with this id or display prefix. KeyError if none, ValueError if ambiguous."""
        query = select(ApiKey).where(or_(ApiKey.id == key_id_or_prefix, ApiKey.prefix == key_id_or_prefix))
        with self._session.begin() as session:
            matches = list(session.scalars(query))
            if not matches:
                raise KeyError(f"no API key with id or prefix {key_id_or_prefix!r}")
            if len(matches) > 1:
                raise ValueError(f"{key_id_or_prefix!r} matches {len(matches)} keys; use the key id")
            key = matches[0]
            if key.revoked_at is None:
                key.revoked_at = utc_now()
                record(session, actor, "api_key.deleted", key.id, {"id": key.id, "name": key.name,
                                                                   "prefix": key.prefix})
        return key

    def rotate(self, key_id: str, grace_period_s: int = 0, actor: Actor | None = None) -> tuple[ApiKey, str]:
        """A new secret for the key (returned once, only its hash kept); the old one is accepted for
        `grace_period_s` more (0: refused at once). Id, limits, spend and team stay. A secret replaced
        earlier and still in its grace is refused from now: one old secret at a time. KeyError if there
        is no such key, ValueError for a revoked one or a negative grace."""
        if isinstance(grace_period_s, bool) or not isinstance(grace_period_s, int) or grace_period_s < 0:
            raise ValueError(f"grace_period_s must be a whole number of seconds >= 0, got {grace_period_s!r}")
        secret = new_secret()
        with self._session.begin() as session:
            key = session.get(ApiKey, key_id, with_for_update=True)
            if key is None:
                raise KeyError(f"no API key with id {key_id!r}")
            if key.revoked_at is not None:
                raise ValueError(f"key {key_id!r} is revoked: there is no secret to rotate")
            old_prefix, until = key.prefix, int(time.time()) + grace_period_s if grace_period_s else None
            key.previous_key_hash, key.previous_valid_until = (key.key_hash, until) if until else (None, None)
            key.key_hash, key.prefix = hash_secret(secret), secret[:DISPLAY_PREFIX_CHARS]
            record(session, actor, "api_key.rotated", key_id,
                   {"id": key_id, "prefix": key.prefix, "previous_prefix": old_prefix,
                    "grace_period_s": grace_period_s, "previous_valid_until": until})
        return key, secret

    def lookup(self, secret: str) -> ApiKey | None:
        """The active key for this secret, or its secret before a rotation still in its grace; None where
        unknown or revoked. Expiry is the caller's to check, at each request (gateway/auth.py)."""
        hashed = hash_secret(secret)
        # Two equality lookups, the usual one first: an OR of both hashes costs every lookup (bench/key_auth.py).
        with self._session() as session:
            key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hashed, ApiKey.revoked_at.is_(None))
                                  ).one_or_none()
            if key is not None:
                return key
            return session.scalars(select(ApiKey).where(
                ApiKey.previous_key_hash == hashed, ApiKey.previous_valid_until > int(time.time()),
                ApiKey.revoked_at.is_(None))).one_or_none()

    def add_spend(self, key_id: str, usd: float, period: int | None = None) -> None:
        """Atomic increment in the database; with `period`, the budget period's total too (storage/spend.py).
        The gateway adds its requests' spend with their outcome rows instead (storage/outcome_writer.py)."""
        add_spend(self._engine, ApiKey, key_id, usd, period)

    def of_team(self, team_id: str, include_revoked: bool = False) -> list[ApiKey]:
        query = select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        with self._session() as session:
            return list(session.scalars(query))


def _check_team(session: Session, team_id: str | None) -> None:
    """ValueError for a team that is not there. Its row is locked until the key is written (PostgreSQL's
    FOR KEY SHARE), so a team deleted meanwhile (storage/teams.py) sees the key, or the key no team."""
    if team_id is not None and session.get(Team, team_id, with_for_update={"key_share": True}) is None:
        raise ValueError(f"team_id: no team {team_id!r}")


def check_expiry(expires_at: int | None) -> None:
    """ValueError, starting with the field's name, for an expiry that is not a future Unix time."""
    if expires_at is None:
        return
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise ValueError(f"expires_at must be Unix seconds (an integer), got {expires_at!r}")
    if expires_at <= time.time():
        raise ValueError(f"expires_at must be in the future, got {expires_at} (now {int(time.time())})")


def check_mcp_servers(servers: list[str] | None) -> None:
    """ValueError, starting with the field's name, for anything but a list of names (empty: none of them)."""
    if servers is not None and (not isinstance(servers, list) or not all(isinstance(s, str) and s for s in servers)):
        raise ValueError(f"mcp_servers must be a list of MCP server names, got {servers!r}")


def check_limits(rpm_limit: int | None, budget_usd: float | None, models: list[str] | None,
                  priority: float | None, budget_period: str | None = None, tpm_limit: int | None = None) -> None:
    """ValueError, starting with the field's name, for a limit no request could meet."""
    if budget_period is not None and budget_period not in BUDGET_PERIODS:
        raise ValueError(f"budget_period must be one of {', '.join(BUDGET_PERIODS)} (or null), got {budget_period!r}")
    if rpm_limit is not None and rpm_limit < 1:
        raise ValueError(f"rpm_limit must be at least 1, got {rpm_limit}")
    if tpm_limit is not None and tpm_limit < 1:
        raise ValueError(f"tpm_limit must be at least 1, got {tpm_limit}")
    if budget_usd is not None and not 0 <= budget_usd < float("inf"):
        raise ValueError(f"budget_usd must be a finite amount >= 0, got {budget_usd}")
    if models is not None and (not models or not all(isinstance(m, str) and m for m in models)):
        raise ValueError(f"models must be a non-empty list of names, got {models!r}")
    if priority is not None and not -1e9 <= priority <= 1e9:
        raise ValueError(f"priority must be between -1e9 and 1e9, got {priority}")
