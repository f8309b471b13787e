"""Teams in the database, on SQLite and PostgreSQL: create, change, list with their keys, spend (lifetime and
the budget period's), deletion refused while a key is active; keys given to a team that must exist; and
migration 0024 taking a database that has keys, rows and usage sums to teams (and back); a team's priority
kept and checked, and migration 0027 adding and dropping its column."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from storage.db import create_engine
from storage.keys import KeyStore
from storage.migrate import alembic_config, current_revision, head_revision, upgrade
from storage.models import ApiKey, Outcome
from storage.teams import TeamHasKeysError, TeamStore
from storage.usage import UsageQuery, usage

MIDNIGHT = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())


def test_a_team_is_created_changed_and_listed(db_url: str) -> None:
    teams = TeamStore(db_url)
    team = teams.create("platform", rpm_limit=10, budget_usd=5.0, budget_period="month", models=["a", "a", "b"],
                        metadata={"cost_center": "42"})
    assert (team.name, team.rpm_limit, team.tpm_limit, team.models, team.metadata_) == (
        "platform", 10, None, ["a", "b"], {"cost_center": "42"})
    changed = teams.update(team.id, rpm_limit=None, tpm_limit=1000, name="infra", metadata=None)
    assert (changed.name, changed.rpm_limit, changed.tpm_limit, changed.budget_usd, changed.metadata_) == (
        "infra", None, 1000, 5.0, None)
    assert [t.id for t in teams.list()] == [team.id]
    for bad in ({"rpm_limit": 0}, {"tpm_limit": -1}, {"budget_usd": -1.0}, {"budget_period": "year"},
                {"models": []}, {"name": " "}, {"priority": 1e12}, {"weight": 1}):
        with pytest.raises(ValueError):
            teams.update(team.id, **bad)
    with pytest.raises(ValueError, match="^name"):
        teams.create("")
    with pytest.raises(KeyError):
        teams.update("missing", rpm_limit=1)
    assert teams.get(team.id).rpm_limit is None  # type: ignore[union-attr]  # refused changes changed nothing


def test_keys_join_a_team_that_exists(db_url: str) -> None:
    teams, keys = TeamStore(db_url), KeyStore(db_url)
    team = teams.create("platform")
    key_id, secret = keys.create("app", team_id=team.id)
    other_id, _ = keys.create("dev")
    assert keys.lookup(secret).team_id == team.id  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="^team_id"):
        keys.create("stray", team_id="no-such-team")
    with pytest.raises(ValueError, match="^team_id"):
        keys.update(other_id, team_id="no-such-team")
    assert keys.update(other_id, team_id=team.id, rpm_limit=3).team_id == team.id
    assert {k.id for k in keys.of_team(team.id)} == {key_id, other_id}
    assert teams.key_counts() == {team.id: 2}
    assert keys.update(other_id, team_id=None).team_id is None  # left the team


def test_a_team_with_active_keys_is_not_deleted(db_url: str) -> None:
    teams, keys = TeamStore(db_url), KeyStore(db_url)
    team = teams.create("platform")
    active, _ = keys.create("app", team_id=team.id)
    retired, _ = keys.create("old", team_id=team.id)
    keys.revoke(retired)
    with pytest.raises(TeamHasKeysError) as refused:
        teams.delete(team.id)
    assert refused.value.keys == 1 and teams.get(team.id) is not None
    keys.revoke(active)
    teams.delete(team.id)
    assert teams.get(team.id) is None
    assert keys.get(retired).team_id is None and keys.get(active).team_id is None  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        teams.delete(team.id)


def test_team_spend_keeps_the_lifetime_and_the_periods_totals(db_url: str) -> None:
    teams = TeamStore(db_url)
    team = teams.create("platform", budget_usd=1.0, budget_period="day")
    teams.add_spend(team.id, 0.25, MIDNIGHT)
    teams.add_spend(team.id, 0.25, MIDNIGHT)
    teams.add_spend(team.id, 0.125, MIDNIGHT + 86_400)  # the next day starts afresh
    teams.add_spend(team.id, 0.5, MIDNIGHT)  # settled late, from the day before: lifetime only
    stored = teams.get(team.id)
    assert stored is not None
    assert (stored.spent_usd, stored.period_start, stored.period_spent_usd) == (
        pytest.approx(1.125), MIDNIGHT + 86_400, pytest.approx(0.125))
    with pytest.raises(KeyError):
        teams.add_spend("missing", 1.0)


def test_migration_0024_takes_a_database_with_keys_rows_and_sums(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "0023")
    engine = create_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    created = datetime.fromtimestamp(MIDNIGHT + 60, UTC)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO api_keys (id, name, key_hash, prefix, created_at, spent_usd, "
                                   "period_spent_usd) VALUES ('k1', 'app', 'h1', 'sk-pitstop-abc', :at, 0.5, 0)"),
                           {"at": created.replace(tzinfo=None) if sqlite else created})
        for width in (60, 3_600):
            connection.execute(sa.text(
                "INSERT INTO usage_rollup (width_s, bucket, model, api_key_id, route_group, endpoint, batch, requests, "
                "input_tokens, output_tokens, cached_tokens, cost_usd, baseline_cost_usd, cache_hits) VALUES "
                f"({width}, {MIDNIGHT}, 'm', 'k1', '', 'chat', false, 3, 30, 15, 0, 0.75, 0.75, 0)"))
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    keys = KeyStore(engine)
    assert (keys.get("k1").spent_usd, keys.get("k1").team_id) == (0.5, None)  # type: ignore[union-attr]
    team = TeamStore(engine).create("platform")
    keys.update("k1", team_id=team.id)
    [line] = usage(engine, UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 3_600, bucket_s=3_600, group_by=("team_id",)))
    assert (line.group, line.requests, line.cost_usd) == ({"team_id": None}, 3, pytest.approx(0.75))
    with engine.begin() as connection:  # the new column is written and read
        connection.execute(sa.insert(Outcome), [{"request_id": "r1", "created_at": created, "team_id": team.id}])
        assert connection.scalar(sa.select(Outcome.team_id)) == team.id
        assert connection.scalar(sa.select(ApiKey.team_id)) == team.id

    command.downgrade(alembic_config(engine.url.render_as_string(hide_password=False)), "0023")
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT SUM(requests) FROM usage_rollup WHERE width_s = 3600")) == 3
        assert "team_id" not in {c["name"] for c in sa.inspect(connection).get_columns("api_keys")}
    upgrade(engine)
    engine.dispose()


def test_a_teams_priority_is_kept_checked_and_migration_0027_adds_and_drops_it(db_url: str) -> None:
    teams = TeamStore(db_url)
    team = teams.create("batch", priority=5)
    assert teams.get(team.id).priority == 5  # type: ignore[union-attr]
    assert teams.update(team.id, name="batch-2").priority == 5  # a change of something else keeps it
    assert teams.update(team.id, priority=None).priority is None
    with pytest.raises(ValueError, match="^priority"):
        teams.create("x", priority=1e12)
    teams.update(team.id, priority=-1.5)

    engine = create_engine(db_url)
    command.downgrade(alembic_config(engine.url.render_as_string(hide_password=False)), "0026")
    with engine.connect() as connection:
        assert "priority" not in {c["name"] for c in sa.inspect(connection).get_columns("teams")}
        assert connection.scalar(sa.text("SELECT name FROM teams")) == "batch-2"  # the team itself kept
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0030"
    assert TeamStore(engine).get(team.id).priority is None  # type: ignore[union-attr]  # none before the column
    engine.dispose()
