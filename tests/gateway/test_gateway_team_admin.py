"""Teams over HTTP (/v1/teams, master key only) and from the CLI (`pitstop teams`): create, list, read,
change and delete, keys given to a team (`team_id` on /v1/keys, `pitstop keys create --team`); a team with
active keys is not deleted (a 409), its revoked keys are detached; bad input is a 4xx naming the field,
never a 500."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.harness import (
    Gateway,
    gateway_config,
    model_entry,
    run_cli,
    run_cli_here,
    running_gateway,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess

MASTER = "master-secret-for-team-admin"


@pytest.fixture(scope="module")
def gw(upstream_processes: tuple[UpstreamProcess, UpstreamProcess],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    a, _ = upstream_processes
    raw = gateway_config(tmp_path_factory.mktemp("team-admin"), [model_entry("up", a.api_base),
                                                                 model_entry("other", a.api_base)],
                         [{"name": "grp", "models": ["up", "other"]}], auth={"require_keys": True, "master_key": MASTER})
    with running_gateway(raw) as gateway:
        yield gateway


@pytest.fixture
def admin(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.http(headers={"authorization": f"Bearer {MASTER}"}) as client:
        yield client


def test_a_team_is_created_read_changed_and_deleted(gw: Gateway, admin: httpx.Client, upstreams: tuple) -> None:
    made = admin.post("/v1/teams", json={"name": "platform", "rpm_limit": 50, "budget_usd": 10,
                                         "budget_period": "month", "models": ["grp", "up"],
                                         "metadata": {"cost_center": "42"}})
    assert made.status_code == 201, made.text
    team = made.json()
    assert (team["object"], team["name"], team["rpm_limit"], team["tpm_limit"], team["budget_usd"]) == (
        "team", "platform", 50, None, 10)
    assert (team["budget_period"], team["spent_usd"], team["period_spent_usd"], team["keys"]) == ("month", 0.0, 0.0, 0)
    assert team["models"] == ["grp", "up"] and team["metadata"] == {"cost_center": "42"}
    assert team["period_renews_at"] > team["created_at"]

    key = admin.post("/v1/keys", json={"name": "app", "team_id": team["id"], "models": ["up"]})
    assert key.status_code == 201 and key.json()["team_id"] == team["id"], key.text
    with gw.http(headers={"authorization": f"Bearer {key.json()['secret']}"}) as http:
        answer = http.post("/v1/chat/completions", json={"model": "up", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 200 and answer.headers["x-ratelimit-limit-requests"] == "50"  # the team's

    gw.flush()  # the spend goes into the team's row with the outcome rows' batch
    listed = {t["id"]: t for t in admin.get("/v1/teams").json()["data"]}
    assert listed[team["id"]]["keys"] == 1
    read = admin.get(f"/v1/teams/{team['id']}").json()
    assert read["keys"] == 1 and read["spent_usd"] > 0  # the key's request, in the team's row

    changed = admin.patch(f"/v1/teams/{team['id']}", json={"rpm_limit": None, "name": "infra", "metadata": {}})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["rpm_limit"], changed.json()["metadata"]) == ("infra", None, {})

    refused = admin.delete(f"/v1/teams/{team['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "team_has_keys"
    assert "1 active key" in refused.json()["error"]["message"]
    assert admin.delete(f"/v1/keys/{key.json()['id']}").status_code == 200
    deleted = admin.delete(f"/v1/teams/{team['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"id": team["id"], "object": "team.deleted", "deleted": True}
    assert admin.get(f"/v1/keys/{key.json()['id']}").json()["team_id"] is None  # the revoked key, detached
    assert admin.get(f"/v1/teams/{team['id']}").status_code == 404


def test_a_teams_priority_is_set_listed_changed_and_lifted(admin: httpx.Client) -> None:
    made = admin.post("/v1/teams", json={"name": "batch", "priority": 5})
    assert made.status_code == 201 and made.json()["priority"] == 5, made.text
    team_id = made.json()["id"]
    assert {t["id"]: t["priority"] for t in admin.get("/v1/teams").json()["data"]}[team_id] == 5
    assert admin.patch(f"/v1/teams/{team_id}", json={"priority": -2.5}).json()["priority"] == -2.5
    assert admin.get(f"/v1/teams/{team_id}").json()["priority"] == -2.5
    assert admin.patch(f"/v1/teams/{team_id}", json={"name": "batch-2"}).json()["priority"] == -2.5  # kept
    assert admin.patch(f"/v1/teams/{team_id}", json={"priority": None}).json()["priority"] is None
    assert admin.post("/v1/teams", json={"name": "plain"}).json()["priority"] is None


def test_a_key_moves_between_teams(admin: httpx.Client) -> None:
    first, second = (admin.post("/v1/teams", json={"name": name}).json()["id"] for name in ("one", "two"))
    key = admin.post("/v1/keys", json={"name": "mover", "team_id": first}).json()
    assert admin.patch(f"/v1/keys/{key['id']}", json={"team_id": second}).json()["team_id"] == second
    assert admin.patch(f"/v1/keys/{key['id']}", json={"team_id": None}).json()["team_id"] is None
    assert admin.delete(f"/v1/teams/{first}").status_code == 200  # no key of it is left


@pytest.mark.parametrize("method, path, body, status, param", [
    ("POST", "/v1/teams", {"rpm_limit": 5}, 400, "name"),
    ("POST", "/v1/teams", {"name": ""}, 400, "name"),
    ("POST", "/v1/teams", {"name": 7}, 400, "name"),
    ("POST", "/v1/teams", {"name": "x", "rpm_limit": 0}, 400, "rpm_limit"),
    ("POST", "/v1/teams", {"name": "x", "tpm_limit": 2.5}, 400, "tpm_limit"),
    ("POST", "/v1/teams", {"name": "x", "budget_usd": -1}, 400, "budget_usd"),
    ("POST", "/v1/teams", {"name": "x", "budget_usd": "ten"}, 400, "budget_usd"),
    ("POST", "/v1/teams", {"name": "x", "budget_period": "year"}, 400, "budget_period"),
    ("POST", "/v1/teams", {"name": "x", "models": ["nope"]}, 400, "models"),
    ("POST", "/v1/teams", {"name": "x", "models": []}, 400, "models"),
    ("POST", "/v1/teams", {"name": "x", "models": "up"}, 400, "models"),
    ("POST", "/v1/teams", {"name": "x", "metadata": {"k": 1}}, 400, "metadata"),
    ("POST", "/v1/teams", {"name": "x", "priority": "urgent"}, 400, "priority"),
    ("POST", "/v1/teams", {"name": "x", "priority": True}, 400, "priority"),
    ("POST", "/v1/teams", {"name": "x", "priority": 1e12}, 400, "priority"),
    ("PATCH", "/v1/teams/nope", {"priority": [1]}, 400, "priority"),
    ("POST", "/v1/teams", {"name": "x", "weight": 1}, 400, "weight"),
    ("POST", "/v1/teams", ["name"], 400, None),
    ("PATCH", "/v1/teams/nope", {"rpm_limit": 5}, 404, None),
    ("PATCH", "/v1/teams/nope", {"name": None}, 400, "name"),
    ("GET", "/v1/teams/nope", None, 404, None),
    ("DELETE", "/v1/teams/nope", None, 404, None),
    ("POST", "/v1/keys", {"name": "x", "team_id": "nope"}, 400, "team_id"),
    ("POST", "/v1/keys", {"name": "x", "team_id": 5}, 400, "team_id"),
])
def test_bad_requests_name_the_field(admin: httpx.Client, method: str, path: str, body: object, status: int,
                                     param: str | None) -> None:
    response = admin.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_a_patch_outside_the_teams_models_or_to_a_team_that_is_gone_is_a_400(admin: httpx.Client) -> None:
    team = admin.post("/v1/teams", json={"name": "narrow", "models": ["up"]}).json()
    key = admin.post("/v1/keys", json={"name": "k"}).json()
    wide = admin.patch(f"/v1/keys/{key['id']}", json={"team_id": team["id"], "models": ["other"]})
    assert wide.status_code == 400 and wide.json()["error"]["param"] == "models"
    joined = admin.patch(f"/v1/keys/{key['id']}", json={"team_id": team["id"], "models": ["up"]})
    assert joined.status_code == 200
    stray = admin.patch(f"/v1/keys/{key['id']}", json={"models": ["grp"]})  # still in the team
    assert stray.status_code == 400 and stray.json()["error"]["param"] == "models"
    gone = admin.patch(f"/v1/keys/{key['id']}", json={"team_id": "no-such-team"})
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "team_id"


def test_only_the_master_key_manages_teams(gw: Gateway, admin: httpx.Client) -> None:
    secret = admin.post("/v1/keys", json={"name": "tenant"}).json()["secret"]
    for token in (secret, "wrong", None):
        with gw.http(headers={"authorization": f"Bearer {token}"} if token else {}) as http:
            for method, path in (("GET", "/v1/teams"), ("POST", "/v1/teams"), ("PATCH", "/v1/teams/x"),
                                 ("DELETE", "/v1/teams/x")):
                response = http.request(method, path, json={"name": "sneaky"})
                assert response.status_code == 401, (token, path, response.text)
    assert "sneaky" not in {t["name"] for t in admin.get("/v1/teams").json()["data"]}


def test_the_cli_makes_teams_and_their_keys(tmp_path: Path) -> None:
    config = write_config(tmp_path / "pitstop.yaml", gateway_config(tmp_path, [model_entry("up", "http://x/v1")]))
    made = run_cli("teams", "create", "--config", str(config), "--name", "platform", "--rpm", "60", "--budget", "25",
                   "--budget-period", "month", "--models", "up")
    assert made.returncode == 0, made.stderr
    team_id = re.search(r"^id: (\S+)$", made.stdout, re.M).group(1)  # type: ignore[union-attr]
    key = run_cli_here("keys", "create", "--config", str(config), "--name", "app", "--team", team_id)
    assert key.returncode == 0, key.stderr
    key_id = re.search(r"^id:\s+(\S+)$", key.stdout, re.M).group(1)  # type: ignore[union-attr]
    assert f"team={team_id}" in run_cli_here("keys", "list", "--config", str(config)).stdout
    listed = run_cli_here("teams", "list", "--config", str(config)).stdout
    assert f"{team_id}  platform  keys=1  rpm=60  tpm=None  budget=25.0/month" in listed
    assert "models=up  priority=None" in listed

    assert run_cli_here("teams", "update", team_id, "--config", str(config), "--rpm", "none", "--tpm", "1000",
                        "--budget-period", "none", "--priority", "5").returncode == 0
    url = gateway_config(tmp_path, [])["storage"]["url"]
    team = TeamStore(url).get(team_id)
    assert team is not None and (team.rpm_limit, team.tpm_limit, team.budget_period, team.budget_usd) == (
        None, 1000, None, 25.0)
    assert team.priority == 5 and "priority=5.0" in run_cli_here("teams", "list", "--config", str(config)).stdout
    assert run_cli_here("teams", "update", team_id, "--config", str(config), "--priority", "none").returncode == 0
    assert TeamStore(url).get(team_id).priority is None  # type: ignore[union-attr]
    made = run_cli_here("teams", "create", "--config", str(config), "--name", "batch", "--priority", "-3")
    assert made.returncode == 0, made.stderr
    batch = TeamStore(url).get(re.search(r"^id: (\S+)$", made.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert batch is not None and batch.priority == -3
    for bad in ("urgent", "1e10", "nan"):
        refused = run_cli_here("teams", "create", "--config", str(config), "--name", "x", "--priority", bad)
        assert refused.returncode == 2 and "--priority" in refused.stderr, bad

    for args, code, said in [
        (("keys", "create", "--name", "x", "--team", "nope"), 2, "--team: no team 'nope'"),
        (("teams", "update", "nope", "--rpm", "5"), 1, "no team with id 'nope'"),
        (("teams", "update", team_id), 2, "give something to change"),
        (("teams", "create", "--name", "y", "--models", "nope"), 2, "neither a model nor a route group"),
        (("teams", "delete", team_id), 1, "has 1 active key"),
    ]:
        result = run_cli_here(*args, "--config", str(config))
        assert (result.returncode, said in result.stderr) == (code, True), (args, result.stderr)
    assert run_cli_here("teams", "create", "--name", "z", "--rpm", "0", "--config", str(config)).returncode == 2
    KeyStore(url).revoke(key_id)
    deleted = run_cli_here("teams", "delete", team_id, "--config", str(config))
    assert deleted.returncode == 0 and f"deleted {team_id} (platform)" in deleted.stdout
