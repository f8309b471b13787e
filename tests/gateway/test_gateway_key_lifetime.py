"""Keys that expire and rotate, through the gateway over real sockets with the openai SDK and httpx, on
SQLite and PostgreSQL, in process and on Redis: a key with a 2 s lifetime works, then is OpenAI's 401
`expired_api_key` naming its expiry (its cached lookup notwithstanding, on the Anthropic path's x-api-key
too) and takes no rate slot; a PATCH lifting the expiry restores it. A rotation's new secret works at once,
the old one through its grace and a 401 after (grace 0: at once), with the key's id, limits and spend kept;
and on two replicas sharing PostgreSQL and Redis, a rotation on one refuses the old secret on the other."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import gateway.auth
from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway, wait_until
from tests.gateway.test_gateway_budget_periods import forget_limits
from tests.gateway.test_limits import REDIS_URL, needs_redis
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-key-lifetime-tests"
ADMIN = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
def limits_backend(request: pytest.FixtureRequest) -> dict:
    return {"redis_url": REDIS_URL} if request.param == "redis" else {}


@pytest.fixture(autouse=True)
def long_key_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached lookups outlive every moment tested: only the per-request check (or a change event) can
    refuse a key whose lookup is cached."""
    monkeypatch.setattr(gateway.auth, "_CACHE_TTL_S", 3600.0)


def config(tmp_path: Path, upstream: UpstreamProcess, storage_url: str | None = None, **extra: Any) -> dict:
    return gateway_config(tmp_path, [model_entry("up", upstream.api_base)], storage_url=storage_url,
                          auth={"require_keys": True, "master_key": MASTER}, **extra)


def ask(gw: Gateway, secret: str) -> openai.APIStatusError | None:
    """One chat request; the SDK's error where it was refused."""
    with gw.openai(api_key=secret) as client:
        try:
            client.chat.completions.create(model="up", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        except openai.APIStatusError as refused:
            return refused
    return None


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with gw.http(headers=ADMIN) as http:
        return http.request(method, path, **kwargs)


def test_an_expired_key_is_refused_takes_no_slot_and_a_lifted_expiry_restores_it(
        tmp_path: Path, upstream: UpstreamProcess, storage_url: str, limits_backend: dict) -> None:
    with running_gateway(config(tmp_path, upstream, storage_url, **limits_backend)) as gw:
        made = admin(gw, "POST", "/v1/keys", json={"name": "temp", "rpm_limit": 2, "duration": "2s"})
        assert made.status_code == 201, made.text
        key = made.json()
        forget = ExitStack()
        forget.callback(forget_limits, key["id"])
        with forget:
            assert key["expires_at"] >= int(time.time()) + 1 and key["expired"] is False
            assert ask(gw, key["secret"]) is None  # takes one of its 2 slots; its lookup is cached now
            wait_until(lambda: time.time() >= key["expires_at"], what="the key's expiry")
            for _ in range(3):  # more than its rate: none takes a slot
                refused = ask(gw, key["secret"])
                assert isinstance(refused, openai.AuthenticationError) and refused.status_code == 401
                assert refused.code == "expired_api_key" and f"expires_at {key['expires_at']}" in refused.message
            with gw.http(headers={"x-api-key": key["secret"], "anthropic-version": "2023-06-01"}) as http:
                messages = http.post("/v1/messages", json={"model": "up", "max_tokens": 5,
                                                          "messages": [{"role": "user", "content": "hi"}]})
            assert messages.status_code == 401 and "expired" in messages.text
            listed = {k["id"]: k for k in admin(gw, "GET", "/v1/keys").json()["data"]}
            assert listed[key["id"]]["expired"] is True and listed[key["id"]]["expires_at"] == key["expires_at"]

            lifted = admin(gw, "PATCH", f"/v1/keys/{key['id']}", json={"expires_at": None})
            assert lifted.status_code == 200 and lifted.json()["expired"] is False
            assert ask(gw, key["secret"]) is None  # its second slot: the refusals took none
            over = ask(gw, key["secret"])
            assert isinstance(over, openai.RateLimitError)  # its rate is still counted


def test_bad_expiries_are_400s_naming_the_field(tmp_path: Path, upstream: UpstreamProcess) -> None:
    with running_gateway(config(tmp_path, upstream)) as gw:
        for body, field in (({"duration": "soon"}, "duration"), ({"duration": "0d"}, "duration"),
                            ({"expires_at": 1}, "expires_at"), ({"expires_at": "x"}, "expires_at"),
                            ({"expires_at": 9_999_999_999, "duration": "1d"}, "duration")):
            refused = admin(gw, "POST", "/v1/keys", json={"name": "k", **body})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == field, (body, refused.text)
        key = admin(gw, "POST", "/v1/keys", json={"name": "k"}).json()
        refused = admin(gw, "POST", f"/v1/keys/{key['id']}/rotate", json={"grace_period_s": -1})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "grace_period_s"
        assert admin(gw, "POST", "/v1/keys/missing/rotate").status_code == 404
        set_ = admin(gw, "PATCH", f"/v1/keys/{key['id']}", json={"duration": "30d"}).json()
        assert 30 * 86400 - 60 < set_["expires_at"] - time.time() <= 30 * 86400


def test_a_rotated_secret_works_through_its_grace_and_is_refused_after(
        tmp_path: Path, upstream: UpstreamProcess, storage_url: str, limits_backend: dict) -> None:
    with running_gateway(config(tmp_path, upstream, storage_url, **limits_backend)) as gw:
        key = admin(gw, "POST", "/v1/keys", json={"name": "app", "rpm_limit": 100}).json()
        with ExitStack() as stack:
            stack.callback(forget_limits, key["id"])
            first = key["secret"]
            assert ask(gw, first) is None  # cached here
            rotated = admin(gw, "POST", f"/v1/keys/{key['id']}/rotate", json={"grace_period_s": 2})
            assert rotated.status_code == 200, rotated.text
            second = rotated.json()["secret"]
            assert (rotated.json()["id"], rotated.json()["rpm_limit"]) == (key["id"], 100) and second != first
            assert ask(gw, second) is None and ask(gw, first) is None  # both within the grace
            until = rotated.json()["previous_secret_valid_until"]
            assert int(time.time()) <= until <= int(time.time()) + 2
            wait_until(lambda: time.time() >= until, what="the grace's end")
            refused = ask(gw, first)  # its lookup cached: the per-request check refuses it
            assert isinstance(refused, openai.AuthenticationError) and "rotated" in refused.message
            gw.state.auth.forget(key["id"])  # looked up afresh: the database refuses it too
            assert isinstance(ask(gw, first), openai.AuthenticationError)
            assert ask(gw, second) is None

            third = admin(gw, "POST", f"/v1/keys/{key['id']}/rotate").json()["secret"]  # no body: grace 0
            assert isinstance(ask(gw, second), openai.AuthenticationError)  # refused at once
            assert ask(gw, third) is None
            shown = admin(gw, "GET", f"/v1/keys/{key['id']}").json()
            assert shown["prefix"] == third[:len(shown["prefix"])] and "secret" not in shown


@needs_redis
def test_a_rotation_on_one_replica_refuses_the_old_secret_on_the_other(
        tmp_path: Path, upstream: UpstreamProcess, pg_migrated_url: str) -> None:
    raw = config(tmp_path, upstream, pg_migrated_url, redis_url=REDIS_URL)
    with ExitStack() as stack:
        one, two = (stack.enter_context(running_gateway(raw)) for _ in range(2))
        for replica in (one, two):
            events = replica.state.key_events  # type: ignore[union-attr]
            wait_until(lambda events=events: events.subscribed.is_set(), what="subscribed to key changes")
        key = admin(one, "POST", "/v1/keys", json={"name": "app"}).json()
        stack.callback(forget_limits, key["id"])
        assert ask(two, key["secret"]) is None  # the old secret cached there for an hour
        new = admin(one, "POST", f"/v1/keys/{key['id']}/rotate", json={"grace_period_s": 0}).json()["secret"]
        refused = wait_until(lambda: ask(two, key["secret"]), what="the other replica refusing the old secret")
        assert isinstance(refused, openai.AuthenticationError) and refused.code == "invalid_api_key"
        assert ask(two, new) is None and ask(one, new) is None
