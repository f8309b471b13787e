"""API keys over HTTP (/v1/keys, master key only): create (the secret once), list, read, change limits
and revoke, each taking effect on the gateway's next request; bad input is a 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.harness import Gateway, gateway_config, model_entry, running_gateway
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-key-admin"


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, _ = upstream_processes
    raw = gateway_config(tmp_path_factory.mktemp("key-admin"), [model_entry("up", a.api_base), model_entry("other", a.api_base)],
                         [{"name": "grp", "models": ["up", "other"]}], auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw) as gateway:
        yield gateway


@pytest.fixture
def admin(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as client:
        yield client


def chat(gw: Gateway, secret: str, model: str = "up") -> httpx.Response:
    with gw.http(headers={"authorization": f"Bearer {secret}"}) as http:
        return http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]})


def test_a_key_is_created_used_changed_and_revoked(gw: Gateway, admin: httpx.Client, upstreams: tuple) -> None:
    created = admin.post("/v1/keys", json={"name": "team-a", "rpm_limit": 2, "models": ["grp", "up"]})
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key.pop("secret")
    assert secret.startswith(key["prefix"]) and key["object"] == "api_key" and key["revoked_at"] is None
    assert (key["name"], key["rpm_limit"], key["models"], key["budget_usd"]) == ("team-a", 2, ["grp", "up"], None)
    assert [chat(gw, secret).status_code for _ in range(3)] == [200, 200, 429]  # its rpm
    assert chat(gw, secret, "other").status_code == 403  # not among its models

    listed = admin.get("/v1/keys").json()["data"]
    assert key["id"] in {k["id"] for k in listed} and all("secret" not in k for k in listed)
    assert admin.get(f"/v1/keys/{key['id']}").json()["spent_usd"] >= 0

    changed = admin.patch(f"/v1/keys/{key['id']}", json={"rpm_limit": None, "models": ["other", "other"]})
    assert changed.status_code == 200 and changed.json()["rpm_limit"] is None and changed.json()["models"] == ["other"]
    assert chat(gw, secret, "other").status_code == 200  # at once, not after the key cache's 10 s

    revoked = admin.delete(f"/v1/keys/{key['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = chat(gw, secret, "other")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_a_raised_budget_admits_again(gw: Gateway, admin: httpx.Client, upstreams: tuple) -> None:
    key = admin.post("/v1/keys", json={"name": "budgeted", "budget_usd": 0}).json()
    refused = chat(gw, key["secret"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert admin.patch(f"/v1/keys/{key['id']}", json={"budget_usd": 1.0}).status_code == 200
    assert chat(gw, key["secret"]).status_code == 200


@pytest.mark.parametrize("method, path, body, status, param", [
    ("POST", "/v1/keys", {"rpm_limit": 5}, 400, "name"),
    ("POST", "/v1/keys", {"name": "x", "rpm_limit": 0}, 400, "rpm_limit"),
    ("POST", "/v1/keys", {"name": "x", "rpm_limit": "5"}, 400, "rpm_limit"),
    ("POST", "/v1/keys", {"name": "x", "budget_usd": -1}, 400, "budget_usd"),
    ("POST", "/v1/keys", {"name": "x", "models": ["nope"]}, 400, "models"),
    ("POST", "/v1/keys", {"name": "x", "models": []}, 400, "models"),
    ("POST", "/v1/keys", {"name": "x", "priority": 1e12}, 400, "priority"),
    ("POST", "/v1/keys", {"name": "x", "spent_usd": 0}, 400, "spent_usd"),
    ("PATCH", "/v1/keys/nope", {"rpm_limit": 5}, 404, None),
    ("GET", "/v1/keys/nope", None, 404, None),
    ("DELETE", "/v1/keys/nope", None, 404, None),
])
def test_bad_requests_name_the_field(admin: httpx.Client, method: str, path: str, body: dict | None, status: int,
                                     param: str | None) -> None:
    response = admin.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_only_the_master_key_manages_keys(gw: Gateway, admin: httpx.Client) -> None:
    secret = admin.post("/v1/keys", json={"name": "tenant"}).json()["secret"]
    for token in (secret, "wrong", None):
        with gw.http(headers={"authorization": f"Bearer {token}"} if token else {}) as http:
            for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/x")):
                response = http.request(method, path, json={"name": "sneaky"})
                assert response.status_code == 401, (token, path, response.text)
    assert "sneaky" not in {k["name"] for k in admin.get("/v1/keys").json()["data"]}


def test_without_a_master_key_the_api_is_off(tmp_path: Path, upstreams: tuple) -> None:
    raw = gateway_config(tmp_path, [model_entry("up", upstreams[0].api_base)])
    with running_gateway(raw) as gw, gw.http() as http:
        response = http.get("/v1/keys")
    assert response.status_code == 403 and response.json()["error"]["code"] == "master_key_required"
