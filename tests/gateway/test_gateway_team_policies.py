"""A team's priority and the config's default team limits, through the gateway over real sockets with the
openai SDK: a key that sets no priority sends its team's (the default, and the most urgent its requests
get), a key's own wins, a team's change reaches its keys at once; a team that sets no limits is held to
`limits.team_defaults` (its keys' requests together, in process and on Redis), a team's own limit wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.harness import Gateway, running_gateway
from tests.gateway.test_gateway_budget_periods import forget_limits
from tests.gateway.test_gateway_teams import BUDGET, MASTER, PROMPT, ask, config, limits_backend  # noqa: F401
from tests.gateway.upstream import UpstreamProcess


def sent_priority(gw: Gateway, upstream: UpstreamProcess, secret: str, asked: float | None = None) -> Any:
    """The `priority` the upstream got for one request of `secret` (None: none sent)."""
    with gw.openai(api_key=secret) as client:
        client.chat.completions.create(model="up", max_tokens=5, messages=[{"role": "user", "content": PROMPT}],
                                       extra_body={} if asked is None else {"priority": asked})
    return upstream.stats()["bodies"][-1].get("priority")


def test_a_keys_team_priority_is_its_default_and_floor_and_its_own_wins(
        tmp_path: Path, upstream: UpstreamProcess) -> None:
    with running_gateway(config(tmp_path, upstream)) as gw:
        team = TeamStore(gw.storage_url).create("batch", priority=5)
        keys = KeyStore(gw.storage_url)
        _, plain = keys.create("nightly", team_id=team.id)
        _, own = keys.create("urgent-one", priority=2, team_id=team.id)
        assert sent_priority(gw, upstream, plain) == 5  # the team's, asked nothing
        assert sent_priority(gw, upstream, plain, asked=1) == 5  # never more urgent than the team's
        assert sent_priority(gw, upstream, plain, asked=9) == 9  # it may ask to wait longer
        assert sent_priority(gw, upstream, own) == 2  # the key's own wins
        assert sent_priority(gw, upstream, own, asked=1) == 2
        with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
            assert admin.patch(f"/v1/teams/{team.id}", json={"priority": 7}).json()["priority"] == 7
            assert sent_priority(gw, upstream, plain) == 7  # at once: the team's keys' lookups forgotten
            assert admin.patch(f"/v1/teams/{team.id}", json={"priority": None}).status_code == 200
        assert sent_priority(gw, upstream, plain) is None
        assert sent_priority(gw, upstream, plain, asked=1) == 1


def _defaults(**team_defaults: Any) -> dict:
    return {"limits": {"team_defaults": team_defaults}}


def test_a_team_without_limits_is_held_to_the_default_rate_and_its_own_wins(
        tmp_path: Path, upstream: UpstreamProcess, limits_backend: dict) -> None:  # noqa: F811
    subjects: list[str] = []
    try:
        with running_gateway(config(tmp_path, upstream, **limits_backend, **_defaults(rpm=2))) as gw:
            teams, keys = TeamStore(gw.storage_url), KeyStore(gw.storage_url)
            bare, own = teams.create("bare"), teams.create("own", rpm_limit=4)
            subjects += ["team:" + bare.id, "team:" + own.id]
            _, a = keys.create("a", rpm_limit=100, team_id=bare.id)
            _, b = keys.create("b", rpm_limit=100, team_id=bare.id)
            refused = [ask(gw, secret) for secret in (a, b, a)]
            assert refused[:2] == [None, None]
            assert isinstance(refused[2], openai.RateLimitError) and refused[2].code == "rate_limit_exceeded"
            assert f"rate limit reached for this API key's team 'bare' ({bare.id})" in refused[2].message
            _, c = keys.create("c", rpm_limit=100, team_id=own.id)
            assert [ask(gw, c) is None for _ in range(5)] == [True] * 4 + [False]  # its own 4, not the default 2
            _, alone = keys.create("alone", rpm_limit=100)
            assert [ask(gw, alone) for _ in range(3)] == [None] * 3  # a key of no team: no team default
    finally:
        if limits_backend:
            for subject in subjects:
                forget_limits(subject)


def test_a_team_without_a_budget_is_held_to_the_default_budget(
        tmp_path: Path, upstream: UpstreamProcess, limits_backend: dict) -> None:  # noqa: F811
    team_id = ""
    try:
        raw = config(tmp_path, upstream, **limits_backend, **_defaults(budget_usd=BUDGET, budget_period="day"))
        with running_gateway(raw) as gw:
            team_id = TeamStore(gw.storage_url).create("bare").id
            keys = KeyStore(gw.storage_url)
            _, a = keys.create("a", budget_usd=1.0, team_id=team_id)
            _, b = keys.create("b", budget_usd=1.0, team_id=team_id)
            assert [ask(gw, secret) for secret in (a, b, a)] == [None, None, None]
            refused = ask(gw, b)
            assert isinstance(refused, openai.RateLimitError) and refused.code == "budget_exceeded"
            assert f"this API key's team 'bare' ({team_id}) has spent its budget" in refused.message
            assert "renews" in refused.message  # the default period applies too
            with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as admin:
                assert admin.patch(f"/v1/teams/{team_id}", json={"budget_usd": 1.0}).status_code == 200
            assert ask(gw, b) is None  # a team's own budget wins over the default
    finally:
        if limits_backend and team_id:
            forget_limits("team:" + team_id)


def test_bad_team_defaults_are_config_errors() -> None:
    from gateway.access_config import LimitsConfig

    for bad in ({"rpm": 0}, {"budget_usd": -1}, {"budget_period": "year"}, {"rpm_limit": 5}):
        with pytest.raises(ValueError, match="team_defaults"):
            LimitsConfig.model_validate({"team_defaults": bad})
