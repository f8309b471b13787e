"""API keys and limits: the `pitstop keys` CLI, required keys (401s), the rpm limit (429 + Retry-After)
and the budget (429 once spent, also after a restart), in one gateway process."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

import gateway.auth
from storage.db import create_engine
from storage.export import iter_training_rows
from storage.keys import KeyStore
from tests.gateway.harness import (
    PRICE_IN,
    PRICE_OUT,
    Gateway,
    gateway_config,
    model_entry,
    run_cli,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-tests"
# One prompt word and five answer words.
COST = 1 * PRICE_IN + 5 * PRICE_OUT


def keyed_config(tmp_path: Path, a: UpstreamProcess, **sections: object) -> dict:
    return gateway_config(tmp_path, [model_entry("up", a.api_base)],
                          auth={"require_keys": True, "master_key": MASTER}, **sections)


def create_key(config: Path, name: str, *options: str) -> tuple[str, str]:
    """`pitstop keys create`, in this process: a key is most tests' setup (the script's own runs are below)."""
    result = run_cli_here("keys", "create", "--config", str(config), "--name", name, *options)
    assert result.returncode == 0, result.stderr
    key_id = re.search(r"^id:\s+(\S+)$", result.stdout, re.M)
    secret = re.search(r"^secret:\s+(sk-pitstop-\S+)$", result.stdout, re.M)
    assert key_id and secret, result.stdout
    return key_id.group(1), secret.group(1)


def ask(http: httpx.Client, key: str | None = None, text: str = "x") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return http.post("/v1/chat/completions", headers=headers,
                     json={"model": "up", "messages": [{"role": "user", "content": text}]})


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    config = write_config(tmp_path / "pitstop.yaml", gateway_config(tmp_path, [model_entry("up", "http://x/v1")]))
    alice_id, alice_secret = create_key(config, "alice", "--rpm", "5", "--budget", "1.5")
    bob_id, _ = create_key(config, "bob")
    listed = run_cli("keys", "list", "--config", str(config))
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    alice = next(line for line in lines if alice_id in line)
    assert "alice" in alice and "active" in alice and "rpm=5" in alice and "budget=1.5" in alice
    assert alice_secret[:17] in alice and alice_secret not in listed.stdout  # prefix shown, secret never

    revoked = run_cli("keys", "--config", str(config), "revoke", bob_id)  # --config before works too
    assert revoked.returncode == 0 and f"revoked {bob_id} (bob)" in revoked.stdout
    by_prefix = run_cli("keys", "revoke", "--config", str(config), alice_secret[:17])
    assert by_prefix.returncode == 0 and alice_id in by_prefix.stdout

    missing = run_cli("keys", "revoke", "--config", str(config), "no-such-key")
    assert missing.returncode == 1 and "no-such-key" in missing.stderr
    stored = {k.id: k for k in KeyStore(gateway_config(tmp_path, [])["storage"]["url"]).list()}
    assert stored[alice_id].rpm_limit == 5 and stored[alice_id].budget_usd == 1.5
    assert stored[alice_id].revoked_at is not None and stored[bob_id].revoked_at is not None


@pytest.mark.parametrize("options", [("--rpm", "0"), ("--rpm", "-5"), ("--rpm", "2.5"), ("--budget", "-1"),
                                     ("--budget", "inf"), ("--budget", "nan")])
def test_keys_cli_refuses_a_limit_that_cannot_be_met(tmp_path: Path, options: tuple[str, str]) -> None:
    config = write_config(tmp_path / "pitstop.yaml", gateway_config(tmp_path, [model_entry("up", "http://x/v1")]))
    good_id, _ = create_key(config, "good", "--rpm", "1", "--budget", "0")
    result = run_cli("keys", "create", "--config", str(config), "--name", "bad", *options)
    assert result.returncode == 2 and f"argument {options[0]}" in result.stderr
    store = KeyStore(gateway_config(tmp_path, [])["storage"]["url"])
    with pytest.raises(ValueError, match="rpm_limit|budget_usd"):  # the store refuses them too
        store.create("bad", rpm_limit=0 if options[0] == "--rpm" else None,
                     budget_usd=-1.0 if options[0] == "--budget" else None)
    assert [k.id for k in store.list()] == [good_id]


def test_required_keys(upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.auth, "_CACHE_TTL_S", 0.3)  # so a revocation shows within the test
    raw = keyed_config(tmp_path, upstreams[0])
    with running_gateway(raw) as gw, gw.http() as http:
        keys = KeyStore(gw.storage_url)  # the CLI has its own test; here keys are made in process
        kept_id, kept = keys.create("kept")
        used_id, used = keys.create("used")
        never_id, never = keys.create("never-used")
        keys.revoke(never_id)
        for response in (ask(http), ask(http, "sk-pitstop-not-a-key"), ask(http, "wrong"), ask(http, never)):
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["x-pitstop-request-id"]
        assert ask(http, kept).status_code == 200
        assert ask(http, used).status_code == 200
        assert ask(http, MASTER).status_code == 200
        assert http.post("/v1/chat/completions", headers={"x-api-key": kept},
                         json={"model": "up", "messages": [{"role": "user", "content": "x"}]}).status_code == 200
        assert http.post("/v1/feedback", json={"request_id": "r", "value": 1}).status_code == 401
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models/up").status_code == 401
        assert http.get("/v1/models", headers={"authorization": f"Bearer {kept}"}).json()["data"][0]["id"] == "up"
        assert http.post("/v1/feedback", headers={"authorization": f"Bearer {kept}"},
                         json={"request_id": "r", "value": 1}).status_code == 202

        keys.revoke(used_id)
        wait_until(lambda: ask(http, used).status_code == 401, timeout=10, what="revocation")
        assert ask(http, kept).status_code == 200
        with gw.openai(api_key=kept) as client:
            assert client.chat.completions.create(model="up", messages=[{"role": "user", "content": "x"}]).usage
        with gw.openai(api_key=used) as client, pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="up", messages=[{"role": "user", "content": "x"}])
    rows = gw.rows()
    assert {r["api_key_id"] for r in rows if r["status"] == "ok"} == {kept_id, used_id, None}  # None: master
    assert {r["http_status"] for r in rows if r["status"] == "error"} == {401}


def test_rpm_limit_answers_429_with_retry_after(upstreams: tuple, tmp_path: Path) -> None:
    raw = keyed_config(tmp_path, upstreams[0])
    with running_gateway(raw) as gw, gw.http() as http:
        _, secret = KeyStore(gw.storage_url).create("limited", rpm_limit=3)
        _, other = KeyStore(gw.storage_url).create("other", rpm_limit=3)
        statuses = [ask(http, secret).status_code for _ in range(3)]
        refused = ask(http, secret)
        assert ask(http, other).status_code == 200  # limits are per key
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-pitstop-request-id"]
    assert upstreams[0].stats()["requests"] == 4  # the refused request never reached the upstream


def spent_in_db(gw: Gateway, key_id: str) -> float:
    key = KeyStore(gw.storage_url).get(key_id)
    assert key is not None
    return key.spent_usd


def test_budget_is_enforced_and_survives_a_restart(upstreams: tuple, tmp_path: Path) -> None:
    raw = keyed_config(tmp_path, upstreams[0])
    with running_gateway(raw) as gw, gw.http() as http:
        key_id, secret = KeyStore(gw.storage_url).create("budgeted", budget_usd=2.5 * COST)
        statuses = [ask(http, secret).status_code for _ in range(4)]
        refused = ask(http, secret)
        gw.flush()  # the spend goes into the key's row with the outcome rows' batch
        assert spent_in_db(gw, key_id) == pytest.approx(3 * COST)
    # Admitted while spent < budget: 0, 1 and 2 requests' worth spent; the fourth finds 3 x COST.
    assert statuses == [200, 200, 200, 429]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "budget_exceeded")
    assert "retry-after" not in refused.headers  # waiting does not refill a budget
    with running_gateway(raw) as restarted, restarted.http() as http:
        assert ask(http, secret).status_code == 429, "a restart refilled the budget"


def test_requests_at_once_start_only_what_the_budget_covers(upstreams: tuple, tmp_path: Path) -> None:
    """Eight slow requests at once on a budget of three: each holds its worst case while it runs (its
    prompt and max_tokens at the model's prices), so three start and the rest are told to retry; without
    holds all eight would start, each seeing nothing spent yet."""
    raw = keyed_config(tmp_path, upstreams[0])
    body = {"model": "up", "max_tokens": 5, "messages": [{"role": "user", "content": "[delay:0.5] x"}]}
    cost = 2 * PRICE_IN + 5 * PRICE_OUT  # two prompt words, five answer words
    with running_gateway(raw) as gw:
        key_id, secret = KeyStore(gw.storage_url).create("held", budget_usd=3 * cost)
        with ThreadPoolExecutor(8) as pool, gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
            answers = list(pool.map(lambda _: http.post("/v1/chat/completions", json=body), range(8)))
        assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 5
        for refused in (a for a in answers if a.status_code == 429):
            assert refused.json()["error"]["code"] == "budget_held" and refused.headers["retry-after"] == "1"
        wait_until(lambda: spent_in_db(gw, key_id) == pytest.approx(3 * cost), what="spend in the database")
        with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
            spent = http.post("/v1/chat/completions", json=body)
        assert spent.json()["error"]["code"] == "budget_exceeded"  # now spent, not held


def test_sessions_and_their_feedback_belong_to_the_key_that_made_them(upstreams: tuple, tmp_path: Path) -> None:
    """Two teams that both name their agent's session `agent-1` get two sessions: each key's turns
    count on their own and reach the engine under an id of their own, another key cannot read the
    session (404), and a session's feedback counts only for the requests of the key that sent it."""
    a = upstreams[0]
    raw = keyed_config(tmp_path, a)
    with running_gateway(raw) as gw, gw.http() as http:
        keys = KeyStore(gw.storage_url)
        (alice_id, alice), (bob_id, bob), (_, carol) = keys.create("alice"), keys.create("bob"), keys.create("carol")
        sent_before = len(a.stats()["bodies"])
        by_request: dict[str, str] = {}
        for name, key in (("alice", alice), ("alice", alice), ("bob", bob), ("master", MASTER)):
            response = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}",
                                                                  "x-session-id": "agent-1"},
                                 json={"model": "up", "messages": [{"role": "user", "content": "x"}]})
            assert response.status_code == 200
            by_request[response.headers["x-pitstop-request-id"]] = name
        sent = [body["session_id"] for body in a.stats()["bodies"][sent_before:]]
        assert sent == [f"{alice_id}:agent-1", f"{alice_id}:agent-1", f"{bob_id}:agent-1", "agent-1"]

        def view(key: str) -> httpx.Response:
            return http.get("/v1/sessions/agent-1", headers={"authorization": f"Bearer {key}"})

        assert [(view(key).json()["id"], view(key).json()["turns"]) for key in (alice, bob, MASTER)] == \
            [("agent-1", 2), ("agent-1", 1), ("agent-1", 1)]
        unknown = view(carol)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "session_not_found"

        for key, value in ((alice, 1.0), (bob, 0.0)):
            assert http.post("/v1/feedback", headers={"authorization": f"Bearer {key}"},
                             json={"session_id": "agent-1", "value": value}).status_code == 202
        gw.flush()
    engine = create_engine(gw.storage_url)
    try:
        exported = list(iter_training_rows(engine))
    finally:
        engine.dispose()
    assert sorted((by_request[row["request_id"]], row["quality"]) for row in exported) == \
        [("alice", 1.0), ("alice", 1.0), ("bob", 0.0), ("master", None)]
