"""The routing policies reloaded without a restart (gateway/policy_reload.py), over real sockets with the fake
upstreams `a` and `b` and the openai SDK: each policy's effect before and after `POST /config/reload`, a
request in flight across a reload finishing under the policy it started with, a file that changes a
restart-only setting or names a model that does not exist refused with nothing changed, and
`pitstop config diff` naming the policies a reload swaps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gateway.harness import (
    gateway_config,
    model_entry,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.test_gateway_config_reload import AUTH, Reloadable
from tests.gateway.test_gateway_health_checks import CHECKS, Flaky, flaky, metric  # noqa: F401 (a fixture)
from tests.gateway.upstream import UpstreamProcess

# No cooldown in these tests: a failing deployment stays first in line (least outstanding, ties to the first
# listed), so which deployment a request meets is known.
SERVER = {"allowed_fails": 1000}
FAIL_A = "[fail:503@a] hello"


@pytest.fixture
def two(upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> Iterator[Reloadable]:
    """`m` served by a then b, `n` by b, `o` by a; started without any policy but the defaults."""
    path = tmp_path / "pitstop.yaml"
    with running_gateway(gateway_config(tmp_path, models(upstreams), auth=AUTH, server=SERVER),
                         config_path=path) as gateway:
        yield Reloadable(gateway, path, tmp_path)


def models(upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> list[dict]:
    a, b = upstreams
    return [model_entry("m", a.api_base), model_entry("m", b.api_base), model_entry("n", b.api_base),
            model_entry("o", a.api_base)]


def reload_with(two: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess], **sections: object) -> dict:
    two.write(models(upstreams), **{"server": SERVER, **sections})
    response = two.reload()
    assert response.status_code == 200, response.text
    return response.json()


def status_of(two: Reloadable, model: str, text: str) -> int | str:
    """The answering instance's name, or the error's status."""
    try:
        return two.chat(model, text)
    except openai.APIStatusError as exc:
        return exc.status_code


def test_num_retries_zero_makes_a_failing_deployments_request_fail(
        two: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    assert status_of(two, "m", FAIL_A) == "from-b"  # a failed, retried on b
    state = two.gateway.state
    assert state.conversations.max_hold_s == 600 * 3 + 60 and state.reloader.drain_timeout_s == 600 * 3
    report = reload_with(two, upstreams, server={**SERVER, "num_retries": 0, "cooldown_s": 5})
    # a turn's hold on its conversation and the retired deployments' drain follow the new retries
    assert state.conversations.max_hold_s == 600 + 60 and state.reloader.drain_timeout_s == 600
    assert report["policies_changed"] == ["server.num_retries", "server.cooldown_s"]
    assert report["added"] == report["retired"] == []
    assert status_of(two, "m", FAIL_A) == 503
    pool = two.gateway.state.pool
    assert pool.cooldown_s == 5 and pool.allowed_fails == 1000


def test_a_fallback_chain_added_answers_a_failing_models_request(
        two: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    assert status_of(two, "o", FAIL_A) == 503  # o's only deployment failed, and it has no fallback
    assert reload_with(two, upstreams, fallbacks={"on_error": {"o": ["n"]}})["policies_changed"] == ["fallbacks"]
    assert status_of(two, "o", FAIL_A) == "from-b"  # answered by n
    reload_with(two, upstreams)  # the chain removed
    assert status_of(two, "o", FAIL_A) == 503


def test_hedging_enabled_hedges_a_slow_request(two: Reloadable,
                                              upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    slow_a = "[delay:1@a] hello"
    assert status_of(two, "m", slow_a) == "from-a"  # waited for a
    hedging = {"enabled": True, "delay_s": 0.05, "models": ["m"]}
    assert reload_with(two, upstreams, hedging=hedging)["policies_changed"] == ["hedging"]
    assert status_of(two, "m", slow_a) == "from-b"  # hedged to b, which answered first
    won = metric(two.gateway.http().get("/metrics").text, "pitstop_hedges_total", model="m", outcome="won")
    assert won == 1
    reload_with(two, upstreams)  # off again
    assert status_of(two, "m", slow_a) == "from-a"


def test_a_guardrail_added_refuses_and_one_removed_lets_through(
        two: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    secret = "about project bluebird"
    assert status_of(two, "n", secret) == "from-b"
    guard = {"name": "no-codename", "kind": "blocklist", "patterns": ["(?i)project\\s+bluebird"]}
    assert reload_with(two, upstreams, guardrails=[guard])["policies_changed"] == ["guardrails"]
    assert status_of(two, "n", secret) == 400
    assert status_of(two, "n", "about something else") == "from-b"
    reload_with(two, upstreams)
    assert status_of(two, "n", secret) == "from-b"


def test_health_checks_added_take_a_broken_deployment_out_and_removed_bring_it_back(
        flaky: tuple[Flaky, str], upstreams: tuple[UpstreamProcess, UpstreamProcess], tmp_path: Path) -> None:  # noqa: F811
    server, base = flaky
    server.mode = "broken"
    entries = [model_entry("m", base), model_entry("m", upstreams[0].api_base)]
    path = tmp_path / "pitstop.yaml"
    with running_gateway(gateway_config(tmp_path, entries, auth=AUTH, server=SERVER), config_path=path) as gw:
        two = Reloadable(gw, path, tmp_path)
        assert two.chat("m") == "from-a" and server.posts == 1  # m#0 asked first, failed, retried
        two.write(entries, server=SERVER, health_checks=CHECKS)
        assert two.reload().json()["policies_changed"] == ["health_checks"]
        wait_until(lambda: metric(gw.http().get("/metrics").text, "pitstop_deployment_healthy", deployment="m#0") == 0,
                   what="the broken deployment taken out")
        assert two.chat("m") == "from-a" and server.posts == 1  # not asked: out of routing
        checker = gw.state.health_checker
        two.write(entries, server=SERVER, health_checks={**CHECKS, "unhealthy_after": 3})
        assert two.reload().status_code == 200
        assert gw.state.health_checker is checker and checker.config.unhealthy_after == 3  # changed in place
        two.write(entries, server=SERVER)
        assert two.reload().json()["policies_changed"] == ["health_checks"]
        assert gw.state.health_checker is None and checker._task is not None and checker._task.done()
        assert two.chat("m") == "from-a" and server.posts == 2  # back in routing: asked again


def test_a_request_in_flight_finishes_under_the_policy_it_started_with(
        two: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess]) -> None:
    a, b = upstreams
    reload_with(two, upstreams, fallbacks={"on_error": {"n": ["m"]}})
    answers: dict[str, int | str] = {}
    # On m: slow at a, then failing there: retried on b under the old num_retries (2).
    retried = threading.Thread(target=lambda: answers.update(m=status_of(two, "m", "[delay:1@a] [fail:503@a] hi")))
    # On n: slow at b, then failing there: answered by m's a under the old fallback chain.
    fell_back = threading.Thread(target=lambda: answers.update(n=status_of(two, "n", "[delay:1@b] [fail:503@b] hi")))
    retried.start(), fell_back.start()
    wait_until(lambda: a.stats()["requests"] >= 1 and b.stats()["requests"] >= 1, what="both requests upstream")
    report = reload_with(two, upstreams, server={**SERVER, "num_retries": 0})  # and the fallback chain gone
    assert report["policies_changed"] == ["fallbacks", "server.num_retries"]
    retried.join(30), fell_back.join(30)
    assert answers == {"m": "from-b", "n": "from-a"}
    # the new policy for the next ones:
    assert status_of(two, "m", FAIL_A) == 503 and status_of(two, "n", "[fail:503@b] hi") == 503


@pytest.mark.parametrize(("sections", "reason"), [
    ({"server": {**SERVER, "num_retries": 0, "port": 9999}}, "these sections changed: server.port"),
    ({"server": {**SERVER, "num_retries": 0}, "fallbacks": {"on_error": {"m": ["absent"]}}}, "absent"),
    ({"server": {**SERVER, "num_retries": 0}, "hedging": {"enabled": True},
      "guardrails": [{"name": "bad", "kind": "blocklist", "patterns": ["("]}]}, "is not a regular expression"),
])
def test_a_bad_or_restart_only_change_is_refused_and_no_policy_changes(
        two: Reloadable, upstreams: tuple[UpstreamProcess, UpstreamProcess], sections: dict, reason: str) -> None:
    dispatcher = two.gateway.state.dispatcher
    two.write(models(upstreams), **sections)
    response = two.reload()
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]["message"]
    assert two.gateway.state.dispatcher is dispatcher and dispatcher.num_retries == 2
    assert status_of(two, "m", FAIL_A) == "from-b"  # still retried


def test_diff_names_the_policies_a_reload_swaps(tmp_path: Path) -> None:
    base = "http://127.0.0.1:9/v1"
    entries = [model_entry("m", base), model_entry("n", base)]
    running = write_config(tmp_path / "running.yaml", gateway_config(tmp_path, entries))
    new = write_config(tmp_path / "new.yaml", gateway_config(
        tmp_path, entries, fallbacks={"on_error": {"m": ["n"]}}, health_checks={"interval_s": 1, "timeout_s": 1},
        server={"num_retries": 0}))
    done = run_cli_here("config", "diff", str(running), str(new))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"  keep m#0  ({base})", f"  keep n#0  ({base})",
        "  policy fallbacks: changed (requests in flight finish under the old one)",
        "  policy health_checks: added",
        "  policy server.num_retries: changed (requests in flight finish under the old one)"]
    back = run_cli_here("config", "diff", str(new), str(running))
    assert "  policy health_checks: removed" in back.stdout.splitlines()
