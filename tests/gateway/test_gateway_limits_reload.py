"""`limits` and `alerts` reloaded without a restart (gateway/limits_reload.py), over real sockets with the
openai SDK: a lowered default_rpm refuses a key's next request past it (in process and on Redis) while a
key's own limit stands, team_defaults added bound a team that sets none, changed budget_thresholds fire
at the new share (the team's default budget too), a bad value or a changed `limits.fail_open` is refused
with nothing changed, and `pitstop config diff` names the settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.harness import (
    Gateway,
    Receiver,
    gateway_config,
    model_entry,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.test_gateway_teams import BUDGET, MASTER, ask, limits_backend  # noqa: F401 (a fixture)
from tests.gateway.test_gateway_webhooks import FAST
from tests.gateway.upstream import UpstreamProcess

AUTH = {"require_keys": True, "master_key": MASTER}


class Reloading:
    """A gateway started from a file whose `limits` / `alerts` are rewritten and reloaded."""

    def __init__(self, gateway: Gateway, path: Path, raw: dict) -> None:
        self.gateway, self.path, self.raw = gateway, path, raw

    def reload(self, **sections: Any) -> httpx.Response:
        write_config(self.path, {**self.raw, **sections})
        return httpx.post(f"{self.gateway.url}/config/reload", headers={"Authorization": f"Bearer {MASTER}"},
                          timeout=30)

    def key(self, **fields: Any) -> str:
        return KeyStore(self.gateway.storage_url).create("app", **fields)[1]


def start(tmp_path: Path, upstream: UpstreamProcess, **sections: Any) -> Iterator[Reloading]:
    raw = gateway_config(tmp_path, [model_entry("up", upstream.api_base)], auth=AUTH, webhooks=FAST, **sections)
    path = tmp_path / "pitstop.yaml"
    with running_gateway(raw, config_path=path) as gateway:
        yield Reloading(gateway, path, raw)


@pytest.fixture
def reloading(tmp_path: Path, upstream: UpstreamProcess, limits_backend: dict) -> Iterator[Reloading]:  # noqa: F811
    yield from start(tmp_path, upstream, limits={"default_rpm": 100}, **limits_backend)


def test_a_lowered_default_rpm_refuses_the_next_request_past_it_and_a_keys_own_limit_stands(
        reloading: Reloading) -> None:
    defaulted, own = reloading.key(), reloading.key(rpm_limit=100)
    assert [ask(reloading.gateway, defaulted) for _ in range(2)] == [None, None]  # cached at default_rpm 100
    response = reloading.reload(limits={"default_rpm": 2})
    assert response.status_code == 200, response.text
    assert response.json()["policies_changed"] == ["limits.default_rpm"]
    refused = ask(reloading.gateway, defaulted)
    assert refused is not None and refused.status_code == 429
    assert [ask(reloading.gateway, own) for _ in range(3)] == [None, None, None]


def test_team_defaults_added_bound_a_team_that_sets_none(reloading: Reloading) -> None:
    team = TeamStore(reloading.gateway.storage_url).create("platform")
    secret = reloading.key(rpm_limit=100, team_id=team.id)
    assert ask(reloading.gateway, secret) is None
    response = reloading.reload(limits={"default_rpm": 100, "team_defaults": {"rpm": 2}})
    assert response.status_code == 200 and response.json()["policies_changed"] == ["limits.team_defaults"]
    assert [ask(reloading.gateway, secret) for _ in range(2)] == [None, None]  # counted from now
    refused = ask(reloading.gateway, secret)
    assert refused is not None and refused.status_code == 429


def test_changed_thresholds_fire_at_the_new_share_and_a_teams_default_budget_alerts(
        tmp_path: Path, upstream: UpstreamProcess, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    alerts = {"webhook_url": url, "budget_thresholds": [1.0]}
    for reloading in start(tmp_path, upstream, alerts=alerts):
        keyed = reloading.key(budget_usd=BUDGET)
        team = TeamStore(reloading.gateway.storage_url).create("platform")
        teamed = reloading.key(team_id=team.id)
        assert ask(reloading.gateway, keyed) is None and ask(reloading.gateway, teamed) is None  # 40% each
        response = reloading.reload(alerts={**alerts, "budget_thresholds": [0.5, 1.0]},
                                    limits={"team_defaults": {"budget_usd": BUDGET}})
        assert response.json()["policies_changed"] == ["limits.team_defaults", "alerts.budget_thresholds"]
        assert ask(reloading.gateway, keyed) is None and ask(reloading.gateway, teamed) is None  # 80%
        events = wait_until(lambda: len(hook.events) == 2 and hook.events, what="two alerts")
        by_object = {e.get("team_id") or e["key_id"]: e["threshold"] for e in events}
        assert by_object[team.id] == 0.5 and sorted(by_object.values()) == [0.5, 0.5]


@pytest.mark.parametrize(("limits", "reason"), [
    ({"default_rpm": 0}, "limits.default_rpm"),
    ({"default_rpm": 1, "fail_open": True}, "limits.fail_open"),
])
def test_a_bad_value_or_a_changed_fail_open_is_refused_and_nothing_changes(
        tmp_path: Path, upstream: UpstreamProcess, limits: dict, reason: str) -> None:
    for reloading in start(tmp_path, upstream, limits={"default_rpm": 100}):
        secret = reloading.key()
        response = reloading.reload(limits=limits)
        assert response.status_code == 400 and reason in response.json()["error"]["message"]
        assert [ask(reloading.gateway, secret) for _ in range(3)] == [None, None, None]  # still 100 a minute


def test_config_diff_names_the_limits_and_alerts_a_reload_swaps(tmp_path: Path, upstream: UpstreamProcess) -> None:
    entries = [model_entry("up", upstream.api_base)]
    running = write_config(tmp_path / "running.yaml", gateway_config(tmp_path, entries))
    new = write_config(tmp_path / "new.yaml", gateway_config(
        tmp_path, entries, limits={"default_tpm": 1000, "team_defaults": {"rpm": 5}},
        alerts={"budget_thresholds": [0.9]}))
    done = run_cli_here("config", "diff", str(running), str(new))
    assert done.returncode == 0, done.stderr
    note = "changed (from each key's next request; requests admitted keep theirs)"
    assert done.stdout.splitlines()[1:] == [f"  policy limits.default_tpm: {note}",
                                            f"  policy limits.team_defaults: {note}",
                                            f"  policy alerts.budget_thresholds: {note}"]
    refused = run_cli_here("config", "diff", str(running), str(write_config(
        tmp_path / "fail_open.yaml", gateway_config(tmp_path, entries, limits={"fail_open": True}))))
    assert refused.returncode == 1 and "limits.fail_open" in refused.stdout
