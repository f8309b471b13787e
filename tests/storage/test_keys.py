"""API key store: create, look up by secret, list, revoke, add spend."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from storage.db import create_engine
from storage.keys import KeyStore
from storage.models import ApiKey


def test_create_lookup_revoke(db_url: str) -> None:
    store = KeyStore(db_url)
    key_id, secret = store.create("ci-bot", rpm_limit=60, budget_usd=5.0)
    assert secret.startswith("sk-pitstop-") and len(secret) > 40

    found = store.lookup(secret)
    assert found is not None and found.id == key_id and found.name == "ci-bot"
    assert found.rpm_limit == 60 and found.budget_usd == 5.0 and found.spent_usd == 0.0
    assert secret.startswith(found.prefix) and found.active
    assert store.lookup(secret + "x") is None

    engine = create_engine(db_url)
    with engine.connect() as connection:  # only the hash is stored
        stored = connection.execute(sa.select(ApiKey.key_hash)).scalar_one()
    engine.dispose()
    assert stored == hashlib.sha256(secret.encode()).hexdigest() and secret not in stored

    revoked = store.revoke(found.prefix)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.lookup(secret) is None
    assert [key.id for key in store.list()] == [key_id]
    assert store.list(include_revoked=False) == []


def test_revoke_by_id_and_errors(db_url: str) -> None:
    store = KeyStore(db_url)
    first_id, _ = store.create("one")
    second_id, second_secret = store.create("two")
    store.revoke(first_id)
    assert store.lookup(second_secret) is not None
    with pytest.raises(KeyError):
        store.revoke("sk-pitstop-nope")
    assert {key.name for key in store.list(include_revoked=False)} == {"two"}
    assert second_id != first_id


def test_add_spend_accumulates(db_url: str) -> None:
    store = KeyStore(db_url)
    key_id, secret = store.create("spender", budget_usd=1.0)
    for _ in range(4):
        store.add_spend(key_id, 0.125)
    key = store.lookup(secret)
    assert key is not None and key.spent_usd == pytest.approx(0.5)
    with pytest.raises(KeyError):
        store.add_spend("missing", 1.0)


def test_update_changes_limits_and_checks_them(db_url: str) -> None:
    store = KeyStore(db_url)
    key_id, secret = store.create("team", rpm_limit=5, budget_usd=2.0, models=["a"], priority=3)
    updated = store.update(key_id, rpm_limit=None, models=["b", "b", "c"])
    assert (updated.rpm_limit, updated.budget_usd, updated.models, updated.priority) == (None, 2.0, ["b", "c"], 3)
    found = store.lookup(secret)
    assert found is not None and found.models == ["b", "c"] and found.rpm_limit is None
    for bad in ({"rpm_limit": 0}, {"budget_usd": float("inf")}, {"models": []}, {"priority": 2e9}, {"spent_usd": 0}):
        with pytest.raises(ValueError):
            store.update(key_id, **bad)
    assert store.get(key_id).budget_usd == 2.0  # type: ignore[union-attr]  # a refused change changes nothing
    with pytest.raises(KeyError):
        store.update("missing", rpm_limit=3)
