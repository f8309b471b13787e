"""Who is calling: an API key (stored hashed, looked up off the event loop with its team, and cached
briefly), the master key, or nobody when the config does not require keys. A key's expiry and a rotated
secret's grace are checked at each request against the cached caller, so the cache never lets either
through past its moment."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from starlette.datastructures import Headers

from engine.server.errors import APIError
from gateway.access_config import AuthConfig, LimitsConfig
from gateway.limits.periods import BudgetPeriod
from gateway.team_limits import SUBJECT_PREFIX, TeamLimits
from gateway.wildcards import name_matches
from storage.keys import KeyStore, hash_secret
from storage.models import ApiKey
from storage.teams import TeamStore

_CACHE_TTL_S = 10.0


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # None: anonymous (keys not required) or the master key
    rpm_limit: int | None = None
    budget_usd: float | None = None
    spent_usd: float = 0.0  # as stored when the key was looked up: seeds the limiter after a restart
    models: frozenset[str] | None = None  # the models and route groups it may send as `model`; None: all
    priority: float | None = None  # its requests' default and most urgent priority (lower goes first): the
    # key's, else its team's
    budget_period: BudgetPeriod | None = None  # the budget counts this UTC period's spend (None: a lifetime's)
    period_start: int | None = None  # as stored: the period `period_spent_usd` counts (Unix seconds)
    period_spent_usd: float = 0.0
    name: str | None = None  # the key's name, for messages about it (gateway/budget_alerts.py)
    tpm_limit: int | None = None  # tokens (prompt + completion) a minute
    team: TeamLimits | None = None  # the key's team, whose limits bound its requests too (gateway/team_limits.py)
    expires_at: int | None = None  # when the key stops working (Unix seconds)
    secret_valid_until: int | None = None  # for a secret a rotation replaced: when its grace ends
    mcp_servers: frozenset[str] | None = None  # the MCP servers it may reach at /mcp (gateway/mcp_gateway.py); None: all

    def check_current(self, now: float) -> None:
        """A 401 for a key past its expiry, or a replaced secret past its grace: before the request takes
        a rate slot or holds budget."""
        if self.expires_at is not None and now >= self.expires_at:
            raise APIError(401, f"this API key expired at {_iso(self.expires_at)} (expires_at {self.expires_at}); "
                           "ask for a new key, or for its expiry to be lifted", code="expired_api_key")
        if self.secret_valid_until is not None and now >= self.secret_valid_until:
            raise APIError(401, "this API key's secret was rotated and its grace period ended at "
                           f"{_iso(self.secret_valid_until)}; use the new secret", code="invalid_api_key")

    def stored_spend(self, period: int | None) -> float:
        """What the database had the key spend in `period` (its lifetime where None) when it was read."""
        if period is None:
            return self.spent_usd
        return self.period_spent_usd if self.period_start == period else 0.0

    def may_use(self, model: str) -> bool:
        """A model it names, or one a wildcard it names matches (`anthropic/*`: gateway/wildcards.py), and
        its team's list allows (a key may not go past its team's)."""
        return (self.team is None or self.team.may_use(model)) and (self.models is None or model in self.models or any(
            name_matches(allowed, model) for allowed in self.models if "*" in allowed))

    def may_use_mcp(self, server: str) -> bool:
        """An MCP server of `mcp_servers:` its list (and its team's) names, or any where it lists none."""
        return (self.team is None or self.team.mcp_servers is None or server in self.team.mcp_servers) and (
            self.mcp_servers is None or server in self.mcp_servers)

    def check_model(self, model: str) -> None:
        """A 403 naming what the key (or its team) may use, before the request takes a rate slot."""
        if self.team is not None:
            self.team.check_model(model)
        if not self.may_use(model):
            allowed = ", ".join(sorted(self.models or ()))
            raise APIError(403, f"this API key may not use {model!r}; it may use: {allowed}", "model",
                           "model_not_allowed")

    def effective_priority(self, asked: float | None) -> float:
        """What the request asked for (or the key's priority when it asked nothing), never more
        urgent than the key's: a tenant may let its requests wait, not jump other tenants' queue."""
        if self.priority is None:
            return asked or 0.0
        return self.priority if asked is None else max(asked, self.priority)


ANONYMOUS = Caller(None)


def _iso(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def bearer_token(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    if value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return headers.get("x-api-key") or headers.get("x-goog-api-key")  # Anthropic's SDKs', Google's


class Authenticator:
    def __init__(self, auth: AuthConfig, limits: LimitsConfig, keys: KeyStore | None,
                 teams: TeamStore | None = None) -> None:
        self.auth = auth
        self.limits = limits
        self.keys = keys
        self.teams = teams
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def _lookup(self, token: str) -> Caller | None:
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        caller = await asyncio.to_thread(self._read, token) if self.keys is not None else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (now + _CACHE_TTL_S, caller)
        return caller

    def _read(self, token: str) -> Caller | None:
        """The active key for `token`, with its team (blocking: run in a thread)."""
        assert self.keys is not None
        key = self.keys.lookup(token)
        if key is None:
            return None
        replaced = key.key_hash != hash_secret(token)  # the secret before a rotation, in its grace
        return self._caller(key, key.previous_valid_until if replaced else None)

    def _caller(self, key: ApiKey, secret_valid_until: int | None = None) -> Caller:
        """The key's limits (the config's defaults where it sets none) and its team's (likewise). A key that
        sets no priority takes its team's: a team's batch keys yield together; a key's own wins."""
        team = self.teams.get(key.team_id) if key.team_id is not None and self.teams is not None else None
        priority = key.priority if key.priority is not None or team is None else team.priority
        return Caller(key.id, key.rpm_limit if key.rpm_limit is not None else self.limits.default_rpm,
                      key.budget_usd if key.budget_usd is not None else self.limits.default_budget_usd,
                      key.spent_usd or 0.0, frozenset(key.models) if key.models is not None else None, priority,
                      cast("BudgetPeriod | None", key.budget_period or self.limits.default_budget_period),
                      key.period_start, key.period_spent_usd or 0.0, key.name,
                      key.tpm_limit if key.tpm_limit is not None else self.limits.default_tpm,
                      TeamLimits.of(team, self.limits.team_defaults) if team is not None else None,
                      key.expires_at, secret_valid_until,
                      frozenset(key.mcp_servers) if key.mcp_servers is not None else None)

    async def caller_of(self, key_id: str | None) -> Caller | None:
        """The caller a key id stands for, as its requests would authenticate now (work that outlives its
        request, a batch taken over by another replica); None for a key revoked, expired or gone."""
        if key_id is None:
            return ANONYMOUS
        return await asyncio.to_thread(self._read_id, key_id) if self.keys is not None else None

    def _read_id(self, key_id: str) -> Caller | None:
        assert self.keys is not None
        key = self.keys.get(key_id)
        if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= time.time()):
            return None
        return self._caller(key)

    def is_master(self, headers: Headers) -> bool:
        token, master = bearer_token(headers), self.auth.master_key
        return bool(token and master and hmac.compare_digest(token.encode(), master.encode()))

    def reconfigure(self, limits: LimitsConfig) -> None:
        """New defaults (a config reload): every cached caller dropped, so the next request reads them."""
        self.limits = limits
        self._cache.clear()

    def forget(self, subject: str) -> None:
        """Drop a key's cached lookups (its limits changed, or it was revoked), or with "team:<id>" those of
        every key of that team (the team changed), so the next request reads them."""
        if subject.startswith(SUBJECT_PREFIX):
            team_id = subject[len(SUBJECT_PREFIX):]
            stale = [t for t, (_, caller) in self._cache.items()
                     if caller is not None and caller.team is not None and caller.team.team_id == team_id]
        else:
            stale = [t for t, (_, caller) in self._cache.items() if caller is not None and caller.key_id == subject]
        for token in stale:
            del self._cache[token]

    async def authenticate(self, headers: Headers) -> Caller:
        token = bearer_token(headers)
        master = self.auth.master_key
        if token and master and hmac.compare_digest(token.encode(), master.encode()):
            return ANONYMOUS
        caller = await self._lookup(token) if token and token.startswith("sk-pitstop-") else None
        if caller is not None:
            caller.check_current(time.time())
            return caller
        if self.auth.require_keys:
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        return ANONYMOUS
