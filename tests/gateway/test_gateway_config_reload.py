"""Reloading the model list without a restart, over real sockets, with the fake upstreams `a` and `b`:
the config file is rewritten and `POST /config/reload` (or SIGHUP to `pitstop serve`) takes it; which
upstream answered tells which deployment served. A deployment that stays keeps its name and state, a
new one serves at once, a removed one finishes what it was doing before it is closed, and a file the
gateway cannot take changes nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.harness import (
    Gateway,
    GatewayProcess,
    gateway_config,
    model_entry,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.upstream import UpstreamProcess

MASTER = "sk-reload-master"
AUTH = {"require_keys": True, "master_key": MASTER}


class Reloadable:
    """A gateway started from a file, and how to rewrite that file and reload it."""

    def __init__(self, gateway: Gateway, path: Path, tmp_path: Path) -> None:
        self.gateway, self.path, self.tmp_path = gateway, path, tmp_path

    def write(self, models: list[dict], **sections: object) -> None:
        write_config(self.path, gateway_config(self.tmp_path, models, auth=AUTH, **sections))

    def reload(self, key: str = MASTER) -> httpx.Response:
        return httpx.post(f"{self.gateway.url}/config/reload", headers={"Authorization": f"Bearer {key}"},
                          timeout=30)

    def chat(self, model: str, text: str = "hello") -> str:
        """The answering instance's name (`from-a` / `from-b`)."""
        client = self.gateway.openai(api_key=MASTER)
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        return (answer.choices[0].message.content or "").split()[0]

    def metric(self, outcome: str) -> str:
        text = httpx.get(f"{self.gateway.url}/metrics").text
        line = next((line for line in text.splitlines()
                     if line.startswith(f'pitstop_config_reloads_total{{outcome="{outcome}"}}')), "")
        return line.rsplit(" ", 1)[-1] if line else "absent"


@pytest.fixture
def reloadable(upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Reloadable]:
    a, _ = upstreams
    path = tmp_path / "pitstop.yaml"
    raw = gateway_config(tmp_path, [model_entry("m", a.api_base)], auth=AUTH)
    with running_gateway(raw, config_path=path) as gateway:
        yield Reloadable(gateway, path, tmp_path)


def test_a_changed_deployment_is_replaced_and_an_unchanged_one_keeps_its_name(
        reloadable: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    assert reloadable.chat("m") == "from-a"
    assert 'pitstop_outstanding_requests{deployment="m#0"}' in httpx.get(f"{reloadable.gateway.url}/metrics").text
    reloadable.write([model_entry("m", a.api_base), model_entry("n", b.api_base)])
    response = reloadable.reload()
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "config.reload", "added": ["n#0"], "retired": [], "kept": 1,
                               "models_added": ["n"], "models_removed": [], "route_groups_changed": [],
                               "policies_changed": [], "wildcards_changed": []}
    assert reloadable.chat("n") == "from-b"
    models = {m.id for m in reloadable.gateway.openai(api_key=MASTER).models.list()}
    assert {"m", "n"} <= models

    reloadable.write([model_entry("m", b.api_base)])  # m moves to b; n is gone
    report = reloadable.reload().json()
    assert report["added"] == ["m#1"] and sorted(report["retired"]) == ["m#0", "n#0"]
    assert report["models_removed"] == ["n"] and report["kept"] == 0
    assert reloadable.chat("m") == "from-b"
    with pytest.raises(openai.NotFoundError) as missing:
        reloadable.chat("n")
    assert missing.value.code == "model_not_found"
    row = reloadable.gateway.row(reloadable.gateway.request_ids[-2])  # the last answer, m on b
    assert row["deployment"] == "m#1"
    assert reloadable.metric("reloaded") == "2.0"
    state = reloadable.gateway.state
    assert state is not None
    wait_until(lambda: not state.reloader.retired, what="the retired deployments closed")
    series = httpx.get(f"{reloadable.gateway.url}/metrics").text  # a retired deployment's gauges are gone
    assert 'deployment="m#0"' not in series and 'pitstop_outstanding_requests{deployment="m#1"}' in series


def test_a_request_in_flight_on_a_retired_deployment_finishes_there(
        reloadable: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    answers: list[str] = []
    slow = threading.Thread(target=lambda: answers.append(reloadable.chat("m", "slow one [delay:1.5]")))
    slow.start()
    wait_until(lambda: a.stats()["requests"] == 1, what="the slow request reached a")
    reloadable.write([model_entry("m", b.api_base)])
    assert reloadable.reload().json()["retired"] == ["m#0"]
    state = reloadable.gateway.state
    assert state is not None
    retired = next(iter(state.reloader.retired))
    assert retired.outstanding == 1  # still open: closing its client now would cut the answer
    assert reloadable.chat("m") == "from-b"  # a new request goes to the new deployment at once
    slow.join(10)
    assert answers == ["from-a"]
    wait_until(lambda: not state.reloader.retired, what="the retired deployment closed once idle")
    assert (a.stats()["requests"], b.stats()["requests"]) == (1, 1)


def test_a_session_homed_on_a_retired_deployment_moves_to_the_new_one(
        upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    a, b = upstreams
    path = tmp_path / "pitstop.yaml"
    sessions = {"enabled": True}
    raw = gateway_config(tmp_path, [model_entry("m", a.api_base)], auth=AUTH, sessions=sessions)
    with running_gateway(raw, config_path=path) as gateway, gateway.http() as http:
        reloadable = Reloadable(gateway, path, tmp_path)

        def turn(text: str) -> httpx.Response:
            return http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER}",
                                                              "x-session-id": "agent-1"},
                             json={"model": "m", "messages": [{"role": "user", "content": text}]})

        assert turn("first").json()["choices"][0]["message"]["content"].startswith("from-a")
        home = http.get("/v1/sessions/agent-1", headers={"Authorization": f"Bearer {MASTER}"}).json()
        assert home["instance"] == "m#0"
        reloadable.write([model_entry("m", b.api_base)], sessions=sessions)
        assert reloadable.reload().json()["retired"] == ["m#0"]
        assert turn("second").json()["choices"][0]["message"]["content"].startswith("from-b")
        moved = http.get("/v1/sessions/agent-1", headers={"Authorization": f"Bearer {MASTER}"}).json()
        assert moved["instance"] == "m#1"


@pytest.mark.parametrize(("change", "reason"), [
    ({"server": {"keep_alive_s": 30}}, "these sections changed: server.keep_alive_s"),
    ({"ranking": {"enabled": False}}, "these sections changed: ranking"),
])
def test_a_change_outside_the_model_list_is_refused_and_nothing_changes(
        reloadable: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess], change: dict,
        reason: str) -> None:
    a, b = upstreams
    reloadable.write([model_entry("m", b.api_base)], **change)
    response = reloadable.reload()
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "config_reload_refused" and reason in error["message"]
    assert reloadable.chat("m") == "from-a"  # still the old list
    assert reloadable.metric("refused") == "1.0"


def test_a_file_that_does_not_parse_or_validate_is_refused(reloadable: Reloadable) -> None:
    reloadable.path.write_text("model_list: [unclosed\n")
    first = reloadable.reload()
    assert first.status_code == 400 and "not valid YAML" in first.json()["error"]["message"]
    reloadable.path.write_text("model_list: []\n")
    second = reloadable.reload()
    assert second.status_code == 400 and "model_list" in second.json()["error"]["message"]
    assert reloadable.chat("m") == "from-a"


def test_route_groups_are_rebuilt_where_they_or_their_models_prices_changed(
        upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    a, b = upstreams
    path = tmp_path / "pitstop.yaml"
    models = [model_entry("cheap", a.api_base, price_in=1e-7), model_entry("strong", b.api_base)]
    auto = {"name": "auto", "models": ["cheap", "strong"], "router": "random"}
    solo = {"name": "solo", "models": ["strong", "cheap"], "router": "random", "cost_preference": 0.5}
    with running_gateway(gateway_config(tmp_path, models, [auto, solo], auth=AUTH), config_path=path) as gateway:
        state = gateway.state
        assert state is not None
        reloadable, before = Reloadable(gateway, path, tmp_path), dict(state.routes.groups)

        def reload_with(models: list[dict], groups: list[dict]) -> dict:
            write_config(path, gateway_config(tmp_path, models, groups, auth=AUTH))
            response = reloadable.reload()
            assert response.status_code == 200, response.text
            return response.json()

        # Another deployment of a routed model, its model_info the same: both groups stay as they are.
        more = [*models, model_entry("strong", a.api_base)]
        assert reload_with(more, [auto, solo])["route_groups_changed"] == []
        assert state.routes.groups == before
        # cheap's price changes: both groups choose among it, both are rebuilt with the new price.
        priced = [model_entry("cheap", a.api_base, price_in=3e-7), *more[1:]]
        assert reload_with(priced, [auto, solo])["route_groups_changed"] == ["auto", "solo"]
        prices = {c.model: c.input_cost_per_token for c in state.routes.groups["auto"].candidates}
        assert prices == {"cheap": 3e-7, "strong": 1e-6}
        # solo's cost preference changes and auto goes: one rebuilt, one removed, a new one added.
        solo_group = state.routes.groups["solo"]
        renamed = {**auto, "name": "auto2"}
        report = reload_with(priced, [{**solo, "cost_preference": 0.9}, renamed])
        assert report["route_groups_changed"] == ["auto", "auto2", "solo"]
        assert state.routes.groups["solo"] is not solo_group and state.routes.groups["solo"].cost_preference == 0.9
        assert reloadable.chat("auto2").startswith("from-")
        with pytest.raises(openai.NotFoundError):
            reloadable.chat("auto")


def test_a_calibrated_route_group_added_calibrates_a_changed_one_restarts_a_removed_one_stops(
        upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    a, b = upstreams
    path = tmp_path / "pitstop.yaml"
    models = [model_entry("cheap", a.api_base), model_entry("strong", b.api_base)]
    plain = {"name": "auto", "models": ["cheap", "strong"], "router": "random"}
    with running_gateway(gateway_config(tmp_path, models, [plain], auth=AUTH), config_path=path) as gateway:
        reloadable = Reloadable(gateway, path, tmp_path)

        def calibration() -> dict | None:
            group = next(m for m in gateway.openai(api_key=MASTER).models.list().data if m.id == "auto")
            return group.model_dump()["pitstop"].get("calibration")

        assert calibration() is None and gateway.state.calibrator is None
        calibrated = {**plain, "calibrate": {"avg_cost_usd": 0.001, "min_requests": 50}}
        write_config(path, gateway_config(tmp_path, models, [calibrated], auth=AUTH))
        assert reloadable.reload().json()["route_groups_changed"] == ["auto"]
        first = wait_until(calibration, what="the added group calibrated")  # too little traffic yet: it says so
        assert first["status"] == "too_little_traffic" and first["requests"] == 0
        task = gateway.state.calibrator._tasks["auto"]
        changed = {**plain, "calibrate": {"avg_cost_usd": 0.002, "min_requests": 50}}
        write_config(path, gateway_config(tmp_path, models, [changed], auth=AUTH))
        assert reloadable.reload().status_code == 200
        assert task.done() and gateway.state.calibrator._tasks["auto"] is not task  # restarted
        wait_until(lambda: (calibration() or {}).get("target") == 0.002, what="the changed group calibrated")
        target = 'pitstop_route_group_calibration_target{route_group="auto"}'
        assert target in httpx.get(f"{gateway.url}/metrics").text
        write_config(path, gateway_config(tmp_path, models, [plain], auth=AUTH))
        assert reloadable.reload().status_code == 200
        assert "auto" not in gateway.state.calibrator._tasks and calibration() is None
        scraped = httpx.get(f"{gateway.url}/metrics").text  # no stale gauge of a calibration that stopped
        assert target not in scraped and 'pitstop_route_group_cost_preference{route_group="auto"}' in scraped
        write_config(path, gateway_config(tmp_path, models, [{**plain, "name": "auto2"}], auth=AUTH))
        assert reloadable.reload().status_code == 200
        scraped = httpx.get(f"{gateway.url}/metrics").text  # a removed group's gauge goes with it
        assert 'cost_preference{route_group="auto"}' not in scraped and 'cost_preference{route_group="auto2"}' in scraped


def test_only_the_master_key_reloads(reloadable: Reloadable) -> None:
    response = reloadable.reload(key="sk-not-the-master")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_a_gateway_built_from_a_dict_has_no_file_to_reload(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                                          tmp_path: Path) -> None:
    with running_gateway(gateway_config(tmp_path, [model_entry("m", upstreams[0].api_base)], auth=AUTH)) as gateway:
        response = httpx.post(f"{gateway.url}/config/reload", headers={"Authorization": f"Bearer {MASTER}"})
    assert response.status_code == 400 and "not started from a config file" in response.text


def test_a_watched_config_file_is_reloaded_when_it_changes(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                                           tmp_path: Path) -> None:
    a, b = upstreams
    path = tmp_path / "pitstop.yaml"
    server = {"watch_config_s": 0.05}
    raw = gateway_config(tmp_path, [model_entry("m", a.api_base)], auth=AUTH, server=server)
    with running_gateway(raw, config_path=path) as gateway:
        reloadable = Reloadable(gateway, path, tmp_path)
        path.write_text("model_list: [unclosed\n")  # refused, counted; the old list serves on
        wait_until(lambda: reloadable.metric("refused") == "1.0", what="the broken file refused")
        assert reloadable.chat("m") == "from-a"
        reloadable.write([model_entry("m", b.api_base)], server=server)
        wait_until(lambda: reloadable.metric("reloaded") == "1.0", what="the fixed file reloaded")
        assert reloadable.chat("m") == "from-b"


def test_sighup_reloads_pitstop_serve(upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:
    a, b = upstreams
    path = write_config(tmp_path / "pitstop.yaml", gateway_config(tmp_path, [model_entry("m", a.api_base)]))
    process = GatewayProcess(path, tmp_path / "serve.log").wait_ready()
    try:
        write_config(path, gateway_config(tmp_path, [model_entry("m", a.api_base), model_entry("n", b.api_base)]))
        process.proc.send_signal(signal.SIGHUP)
        listed = lambda: {m["id"] for m in httpx.get(f"{process.url}/v1/models").json()["data"]}  # noqa: E731
        wait_until(lambda: "n" in listed(), what="the reloaded model listed")
        answer = httpx.post(f"{process.url}/v1/chat/completions", timeout=30,
                            json={"model": "n", "messages": [{"role": "user", "content": "hi"}]})
        assert answer.json()["choices"][0]["message"]["content"].startswith("from-b")
        assert process.proc.poll() is None  # SIGHUP's default would have ended the process
    finally:
        process.close()
