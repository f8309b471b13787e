"""Keys' expiry and rotation, and the admin audit log, in the database (SQLite and PostgreSQL): an expiry kept,
checked and lifted; a rotated key keeps its id and limits while its old secret is looked up only through its
grace; each change with an actor writes its audit row in the change's transaction (a row that cannot be
written undoes the change); the log listed with filters and cursors; and migration 0028 up and down."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from alembic import command

from storage.audit import AuditQuery, AuditStore
from storage.db import create_engine
from storage.keys import KeyStore
from storage.migrate import alembic_config, current_revision, head_revision, upgrade
from storage.teams import TeamStore

ACTOR = {"type": "session", "session": {"user": {"id": "cli:test", "email": None}}}
UNWRITABLE = {"type": "session", "session": {"user": object()}}  # not JSON: its row fails to flush


def test_an_expiry_is_kept_checked_and_lifted(db_url: str) -> None:
    keys = KeyStore(db_url)
    later = int(time.time()) + 3600
    key_id, secret = keys.create("temp", expires_at=later)
    assert keys.lookup(secret).expires_at == later  # type: ignore[union-attr]  # looked up: the caller checks it
    for bad in (int(time.time()) - 1, "soon", 1.5, True):
        with pytest.raises(ValueError, match="^expires_at"):
            keys.update(key_id, expires_at=bad)
    with pytest.raises(ValueError, match="^expires_at"):
        keys.create("past", expires_at=1)
    assert keys.update(key_id, rpm_limit=5).expires_at == later  # a change of something else keeps it
    assert keys.update(key_id, expires_at=None).expires_at is None


def test_a_rotated_keys_old_secret_is_looked_up_only_through_its_grace(db_url: str) -> None:
    keys, teams = KeyStore(db_url), TeamStore(db_url)
    team = teams.create("platform")
    key_id, first = keys.create("app", rpm_limit=7, team_id=team.id)
    keys.add_spend(key_id, 0.25)
    rotated, second = keys.rotate(key_id, grace_period_s=3600)
    assert second != first and rotated.prefix == second[:len(rotated.prefix)]
    for secret in (first, second):
        key = keys.lookup(secret)
        assert key is not None and (key.id, key.rpm_limit, key.team_id, key.spent_usd) == (key_id, 7, team.id, 0.25)
    assert first not in repr(keys.get(key_id).__dict__)  # type: ignore[union-attr]  # only hashes are kept
    _, third = keys.rotate(key_id, grace_period_s=0)  # grace 0: the secret before is refused at once...
    assert keys.lookup(second) is None and keys.lookup(first) is None  # ...and only one old secret is kept
    assert keys.lookup(third).id == key_id  # type: ignore[union-attr]
    _, fourth = keys.rotate(key_id, grace_period_s=1)
    with sa.create_engine(db_url).begin() as connection:  # its grace over without waiting for it
        connection.execute(sa.text("UPDATE api_keys SET previous_valid_until = :t"), {"t": int(time.time()) - 1})
    assert keys.lookup(third) is None and keys.lookup(fourth) is not None
    with pytest.raises(ValueError, match="^grace_period_s"):
        keys.rotate(key_id, grace_period_s=-1)
    with pytest.raises(KeyError):
        keys.rotate("missing")
    keys.revoke(key_id)
    with pytest.raises(ValueError, match="revoked"):
        keys.rotate(key_id)


def test_each_change_writes_its_audit_row_in_its_own_transaction(db_url: str) -> None:
    keys, teams, audit = KeyStore(db_url), TeamStore(db_url), AuditStore(db_url)
    team = teams.create("platform", budget_usd=5.0, actor=ACTOR)
    key_id, secret = keys.create("app", rpm_limit=5, team_id=team.id, actor=ACTOR)
    keys.update(key_id, ACTOR, rpm_limit=10, models=["a"])
    _, new_secret = keys.rotate(key_id, 60, ACTOR)
    keys.revoke(key_id, ACTOR)
    teams.update(team.id, ACTOR, budget_usd=None)
    teams.delete(team.id, ACTOR)
    keys.create("unaudited")  # no actor: no row (a direct call of the storage API)
    rows, more = audit.list(AuditQuery(limit=100))
    assert [row.type for row in rows] == ["team.deleted", "team.updated", "api_key.deleted", "api_key.rotated",
                                          "api_key.updated", "api_key.created", "team.created"] and not more
    by_type = {row.type: row for row in rows}
    assert by_type["api_key.updated"].payload == {"id": key_id, "changes_requested": {"rpm_limit": 10, "models": ["a"]},
                                                  "previous": {"rpm_limit": 5, "models": None}}
    assert by_type["team.updated"].payload["previous"] == {"budget_usd": 5.0}
    assert by_type["api_key.created"].payload["data"]["team_id"] == team.id
    assert by_type["api_key.rotated"].payload["grace_period_s"] == 60
    assert all(row.actor == ACTOR and row.resource_id in (key_id, team.id) for row in rows)
    assert secret not in repr([r.payload for r in rows]) and new_secret not in repr([r.payload for r in rows])

    # An audit row that cannot be written undoes its change: none is done without its row.
    other_id, _ = keys.create("other", rpm_limit=1)
    with pytest.raises(Exception):  # noqa: B017 (the driver's error for an unserialisable value)
        keys.update(other_id, UNWRITABLE, rpm_limit=2)
    with pytest.raises(Exception):  # noqa: B017
        keys.rotate(other_id, 0, UNWRITABLE)
    with pytest.raises(Exception):  # noqa: B017
        keys.create("never", actor=UNWRITABLE)
    with pytest.raises(Exception):  # noqa: B017
        teams.create("never", actor=UNWRITABLE)
    unchanged = keys.get(other_id)
    assert unchanged.rpm_limit == 1 and unchanged.previous_key_hash is None  # type: ignore[union-attr]
    assert "never" not in {k.name for k in keys.list()} | {t.name for t in teams.list()}
    assert len(audit.list(AuditQuery(limit=100))[0]) == 7


def test_the_log_is_listed_newest_first_with_filters_and_cursors(db_url: str) -> None:
    keys, audit = KeyStore(db_url), AuditStore(db_url)
    ids = [keys.create(f"k{i}", actor=ACTOR)[0] for i in range(5)]
    keys.update(ids[0], ACTOR, rpm_limit=3)
    page, more = audit.list(AuditQuery(event_types=["api_key.created"], limit=2))
    assert [row.resource_id for row in page] == [ids[4], ids[3]] and more
    page2, more2 = audit.list(AuditQuery(event_types=["api_key.created"], limit=2, after=page[-1].public_id))
    assert [row.resource_id for row in page2] == [ids[2], ids[1]] and more2
    back, more_back = audit.list(AuditQuery(event_types=["api_key.created"], limit=2, before=page2[0].public_id))
    assert [row.public_id for row in back] == [row.public_id for row in page] and not more_back
    assert [row.type for row in audit.list(AuditQuery(resource_ids=[ids[0]]))[0]] == ["api_key.updated",
                                                                                     "api_key.created"]
    now = page[0].effective_at
    assert audit.list(AuditQuery(effective_at={"gt": now + 10}))[0] == []
    assert len(audit.list(AuditQuery(effective_at={"gte": now - 60, "lte": now + 60}))[0]) == 6
    with pytest.raises(ValueError):
        audit.list(AuditQuery(after="key-1"))


def test_migration_0028_adds_and_drops_expiry_rotation_and_the_log(db_url: str) -> None:
    keys = KeyStore(db_url)
    key_id, secret = keys.create("app", expires_at=int(time.time()) + 60, actor=ACTOR)
    engine = create_engine(db_url)
    command.downgrade(alembic_config(engine.url.render_as_string(hide_password=False)), "0027")
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        assert not {"expires_at", "previous_key_hash", "previous_valid_until"} & {
            c["name"] for c in inspector.get_columns("api_keys")}
        assert "audit_logs" not in inspector.get_table_names()
        assert connection.scalar(sa.text("SELECT name FROM api_keys")) == "app"  # the key itself kept
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0030"
    key = KeyStore(engine).lookup(secret)
    assert key is not None and key.id == key_id and key.expires_at is None  # no expiry before the column
    assert AuditStore(engine).list(AuditQuery())[0] == []
    engine.dispose()
