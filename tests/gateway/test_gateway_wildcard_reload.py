"""Wildcard entries reloaded without a restart (gateway/wildcard_reload.py), over real sockets with the fake
upstreams `a` and `b`: a pattern added serves a new name at once; one removed retires the names it adopted
once their requests in flight have ended (the request in flight answered by its old deployment); a name
adopted through an unchanged pattern keeps its deployment; one whose pattern changed is adopted afresh."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.gateway.harness import (
    gateway_config,
    model_entry,
    run_cli_here,
    running_gateway,
    wait_until,
    write_config,
)
from tests.gateway.test_gateway_config_reload import AUTH, Reloadable
from tests.gateway.test_gateway_policy_reload import status_of
from tests.gateway.test_gateway_wildcards import wildcard
from tests.gateway.upstream import UpstreamProcess


def test_patterns_added_removed_and_changed(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                            tmp_path: Path) -> None:
    a, b = upstreams
    listed = model_entry("m", a.api_base)
    keep, up = wildcard("keep/*", "openai/*", b.api_base), wildcard("up/*", "openai/*", a.api_base)
    path = tmp_path / "pitstop.yaml"
    with running_gateway(gateway_config(tmp_path, [listed, keep, up], auth=AUTH), config_path=path) as gw:
        two = Reloadable(gw, path, tmp_path)
        pool = gw.state.pool
        assert status_of(two, "up/x", "hi") == "from-a" and status_of(two, "keep/y", "hi") == "from-b"
        assert status_of(two, "new/q", "hi") == 404
        kept = pool.by_model["keep/y"][0]
        answers: dict[str, object] = {}
        slow = threading.Thread(target=lambda: answers.update(z=status_of(two, "up/z", "[delay:1@a] hi")))
        slow.start()
        wait_until(lambda: a.stats()["requests"] >= 2, what="up/z's request upstream")
        retiring, adopted_x = pool.by_model["up/z"][0], pool.by_model["up/x"][0]

        two.write([listed, keep, wildcard("new/*", "openai/*", b.api_base)])
        report = two.reload().json()
        assert report["wildcards_changed"] == ["new/*", "up/*"] and report["policies_changed"] == []
        assert sorted(report["retired"]) == sorted([adopted_x.name, retiring.name])
        assert report["models_removed"] == ["up/x", "up/z"] and report["kept"] == 1
        assert status_of(two, "new/q", "hi") == "from-b"  # a pattern added serves at once
        assert status_of(two, "up/x", "hi") == 404  # a pattern removed: its names gone
        assert pool.by_model["keep/y"][0] is kept and status_of(two, "keep/y", "hi") == "from-b"
        slow.join(30)
        assert answers == {"z": "from-a"}  # finished on its retired deployment
        wait_until(lambda: retiring not in gw.state.reloader.retired, what="the retired deployment closed")

        two.write([listed, wildcard("keep/*", "openai/*", a.api_base), wildcard("new/*", "openai/*", b.api_base)])
        report = two.reload().json()
        assert report["wildcards_changed"] == ["keep/*"] and report["models_removed"] == ["keep/y"]
        assert status_of(two, "keep/y", "hi") == "from-a"  # adopted afresh through the changed pattern
        assert pool.by_model["keep/y"][0] is not kept
        assert status_of(two, "new/q", "hi") == "from-b"  # its pattern unchanged: kept


def test_a_name_now_listed_is_the_model_lists(upstreams: tuple[UpstreamProcess, UpstreamProcess],
                                              tmp_path: Path) -> None:
    a, b = upstreams
    up = wildcard("up/*", "openai/*", a.api_base)
    path = tmp_path / "pitstop.yaml"
    with running_gateway(gateway_config(tmp_path, [model_entry("m", a.api_base), up], auth=AUTH),
                         config_path=path) as gw:
        two = Reloadable(gw, path, tmp_path)
        assert status_of(two, "up/x", "hi") == "from-a"
        adopted = gw.state.pool.by_model["up/x"][0]
        two.write([model_entry("m", a.api_base), model_entry("up/x", b.api_base), up])
        report = two.reload().json()
        assert len(report["added"]) == 1 and report["retired"] == [adopted.name]
        assert status_of(two, "up/x", "hi") == "from-b"
        assert "up/x" not in gw.state.routes.wildcards.adopted


def test_diff_names_the_patterns_that_change(tmp_path: Path) -> None:
    base = "http://127.0.0.1:9/v1"
    entries = [model_entry("m", base), wildcard("up/*", "openai/*", base)]
    running = write_config(tmp_path / "running.yaml", gateway_config(tmp_path, entries))
    new = write_config(tmp_path / "new.yaml", gateway_config(tmp_path, [entries[0], wildcard("new/*", "openai/*", base)]))
    done = run_cli_here("config", "diff", str(running), str(new))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [
        "  wildcard new/*: changed (the names it adopted retired once their requests end)",
        "  wildcard up/*: changed (the names it adopted retired once their requests end)"]
