"""The admin audit log through the gateway, over real sockets, on SQLite and PostgreSQL: each master-key
change (a key created, changed, rotated, revoked; a team created, changed, deleted; a config reload) is an
event with its payload, listed newest first by the openai SDK's `admin.organization.audit_logs.list` with
OpenAI's filters and cursors; a key that is not the master key is a 403; no secret appears anywhere in the
log; and `pitstop keys create --duration`, `keys rotate --grace` and `audit list` do the same at the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    run_cli_here,
    running_gateway,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-audit-tests"
ADMIN = {"authorization": f"Bearer {MASTER}"}


def admin(gw: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with gw.http(headers=ADMIN) as http:
        response = http.request(method, path, **kwargs)
    assert response.status_code in (200, 201), response.text
    return response


def admin_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", admin_api_key=MASTER, max_retries=0)


def test_each_admin_change_is_an_event_listed_as_openai_lists_them(
        tmp_path: Path, upstream: UpstreamProcess, storage_url: str) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstream.api_base)], storage_url=storage_url,
                         auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw, config_path=tmp_path / "pitstop.yaml") as gw:
        started = int(time.time())
        team = admin(gw, "POST", "/v1/teams", json={"name": "platform", "budget_usd": 5}).json()
        key = admin(gw, "POST", "/v1/keys", json={"name": "app", "rpm_limit": 5, "team_id": team["id"],
                                                  "duration": "1d"}).json()
        admin(gw, "PATCH", f"/v1/keys/{key['id']}", json={"rpm_limit": 10, "expires_at": None})
        rotated = admin(gw, "POST", f"/v1/keys/{key['id']}/rotate", json={"grace_period_s": 60}).json()
        admin(gw, "DELETE", f"/v1/keys/{key['id']}")
        admin(gw, "PATCH", f"/v1/teams/{team['id']}", json={"budget_usd": None})
        admin(gw, "DELETE", f"/v1/teams/{team['id']}")
        admin(gw, "POST", "/config/reload")
        types = ["config.reloaded", "team.deleted", "team.updated", "api_key.deleted", "api_key.rotated",
                 "api_key.updated", "api_key.created", "team.created"]

        with admin_client(gw) as client:
            events = list(client.admin.organization.audit_logs.list(limit=3))  # the SDK pages through them
            assert [event.type for event in events] == types
            by_type = {event.type: event.model_dump() for event in events}
            first_page = client.admin.organization.audit_logs.list(limit=3)
            assert first_page.has_more and [e.id for e in first_page.data] == [e.id for e in events[:3]]
            only_keys = client.admin.organization.audit_logs.list(
                event_types=["api_key.created", "api_key.rotated"], resource_ids=[key["id"]],
                effective_at={"gte": started, "lte": int(time.time())})
            assert [e.type for e in only_keys.data] == ["api_key.rotated", "api_key.created"]
            assert not client.admin.organization.audit_logs.list(effective_at={"gt": int(time.time()) + 5}).data

        created = by_type["api_key.created"]
        assert created["api_key.created"]["id"] == key["id"]
        assert created["api_key.created"]["data"]["team_id"] == team["id"]
        assert created["api_key.created"]["data"]["expires_at"] == key["expires_at"]
        assert created["actor"]["type"] == "api_key" and created["actor"]["api_key"]["id"] == "master_key"
        assert created["effective_at"] >= started and created["id"].startswith("audit_log-")
        assert by_type["api_key.updated"]["api_key.updated"] == {
            "id": key["id"], "changes_requested": {"rpm_limit": 10, "expires_at": None},
            "previous": {"rpm_limit": 5, "expires_at": key["expires_at"]}}
        assert by_type["api_key.rotated"]["api_key.rotated"]["grace_period_s"] == 60
        assert by_type["team.updated"]["team.updated"]["previous"] == {"budget_usd": 5}
        assert by_type["team.deleted"]["team.deleted"] == {"id": team["id"], "name": "platform"}
        assert by_type["config.reloaded"]["config.reloaded"]["object"] == "config.reload"

        with gw.http(headers=ADMIN) as http:
            page = http.get("/v1/organization/audit_logs", params={"limit": 2})
            body = page.json()
            assert (body["first_id"], body["last_id"], body["has_more"]) == (
                body["data"][0]["id"], body["data"][1]["id"], True)
            back = http.get("/v1/organization/audit_logs", params={"limit": 2, "before": body["last_id"]}).json()
            assert [e["id"] for e in back["data"]] == [body["first_id"]] and not back["has_more"]
            everything = http.get("/v1/organization/audit_logs", params={"limit": 100}).text
            for bad in ({"limit": 0}, {"limit": "x"}, {"after": "key-1"}, {"effective_at[gt]": "yesterday"},
                        {"after": body["last_id"], "before": body["first_id"]}):
                refused = http.get("/v1/organization/audit_logs", params=bad)
                assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
        assert key["secret"] not in everything and rotated["secret"] not in everything and MASTER not in everything

        other = admin(gw, "POST", "/v1/keys", json={"name": "reader"}).json()
        with gw.http(headers={"authorization": f"Bearer {other['secret']}"}) as http:
            forbidden = http.get("/v1/organization/audit_logs")
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "insufficient_permissions"
        with gw.http(headers={"authorization": "Bearer sk-pitstop-nonsense"}) as http:
            assert http.get("/v1/organization/audit_logs").status_code == 401


def test_the_cli_creates_with_a_duration_rotates_with_a_grace_and_lists_the_log(
        tmp_path: Path, upstream: UpstreamProcess) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstream.api_base)],
                         auth={"require_keys": True, "master_key": MASTER})
    path = str(write_config(tmp_path / "pitstop.yaml", raw))
    made = run_cli_here("keys", "create", "--name", "ci", "--duration", "30d", "--config", path)
    assert made.returncode == 0, made.stderr
    key_id, secret = (line.split()[1] for line in made.stdout.splitlines()[:2])
    rotated = run_cli_here("keys", "rotate", key_id, "--grace", "1h", "--config", path)
    assert rotated.returncode == 0 and "works until" in rotated.stdout, rotated.stderr
    new_secret = rotated.stdout.splitlines()[1].split()[1]
    assert run_cli_here("keys", "rotate", "missing", "--config", path).returncode == 1
    assert run_cli_here("keys", "create", "--name", "x", "--duration", "soon", "--config", path).returncode == 2
    listed = run_cli_here("keys", "list", "--config", path)
    assert "active" in listed.stdout and "expires_at=" in listed.stdout

    with running_gateway(raw) as gw:
        with gw.openai(api_key=secret) as client:  # the old secret within its hour's grace
            client.chat.completions.create(model="up", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        with gw.openai(api_key=new_secret) as client:
            client.chat.completions.create(model="up", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        shown = admin(gw, "GET", f"/v1/keys/{key_id}").json()
        assert 29 * 86400 < shown["expires_at"] - time.time() <= 30 * 86400

    audit = run_cli_here("audit", "list", "--since", "1h", "--config", path)
    events = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [e["type"] for e in events] == ["api_key.rotated", "api_key.created"]
    assert events[0]["actor"]["type"] == "session" and events[0]["actor"]["session"]["user"]["id"].startswith("cli:")
    assert secret not in audit.stdout and new_secret not in audit.stdout
    only = run_cli_here("audit", "list", "--type", "api_key.created", "--config", path)
    assert [json.loads(line)["type"] for line in only.stdout.splitlines()] == ["api_key.created"]
    assert run_cli_here("audit", "list", "--since", "2999-01-01", "--config", path).stdout == ""


def test_webhook_endpoint_changes_are_events_without_their_signing_secrets(
        tmp_path: Path, upstream: UpstreamProcess) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstream.api_base)],
                         auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw) as gw:
        made = admin(gw, "POST", "/v1/webhook_endpoints", json={
            "name": "ops", "url": "https://hooks.example.com/a", "event_types": ["batch.failed"]}).json()
        admin(gw, "POST", f"/v1/webhook_endpoints/{made['id']}", json={"name": "ops-2"})
        rotated = admin(gw, "POST", f"/v1/webhook_endpoints/{made['id']}/rotate_secret",
                        json={"keep_old_secret_active_for_24_hours": True}).json()
        admin(gw, "DELETE", f"/v1/webhook_endpoints/{made['id']}")
        with gw.http(headers=ADMIN) as http:
            page = http.get("/v1/organization/audit_logs", params={"resource_ids[]": made["id"]})
        events = page.json()["data"]
        assert [e["type"] for e in events] == ["webhook_endpoint.deleted", "webhook_endpoint.secret_rotated",
                                               "webhook_endpoint.updated", "webhook_endpoint.created"]
        assert events[3]["webhook_endpoint.created"]["data"] == {
            "name": "ops", "url": "https://hooks.example.com/a", "event_types": ["batch.failed"]}
        assert events[2]["webhook_endpoint.updated"] == {"id": made["id"], "changes_requested": {"name": "ops-2"},
                                                          "previous": {"name": "ops"}}
        assert made["signing_secret"] not in page.text and rotated["signing_secret"] not in page.text
