"""`pitstop config check` and `pitstop config diff`: a file read as `pitstop serve` reads it, and what a
reload (gateway/config_reload.py) would do with it, without starting anything."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.harness import gateway_config, model_entry, run_cli_here, write_config

A, B = "http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"


def config(tmp_path: Path, name: str, models: list[dict], **sections: object) -> Path:
    return write_config(tmp_path / name, gateway_config(tmp_path, models, **sections))


def test_check_lists_a_valid_file_and_names_what_is_wrong_with_another(tmp_path: Path) -> None:
    good = config(tmp_path, "good.yaml", [model_entry("m", A), model_entry("m", B), model_entry("n", B)],
                  route_groups=[{"name": "auto", "models": ["m", "n"], "router": "random"}])
    done = run_cli_here("config", "check", "--config", str(good))
    assert done.returncode == 0, done.stderr
    assert "model m: 2 deployments; prices: model_info\n" in done.stdout
    assert "model n: 1 deployment; prices: model_info\n" in done.stdout
    assert "route group auto: router random over m, n" in done.stdout
    bad = config(tmp_path, "bad.yaml", [model_entry("m", A)], route_groups=[{"name": "auto", "models": ["x"]}])
    refused = run_cli_here("config", "check", "--config", str(bad))
    assert refused.returncode == 2 and "invalid config" in refused.stderr and "'x'" in refused.stderr


def test_check_says_where_each_models_prices_come_from(tmp_path: Path) -> None:
    listed = {"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": A}}
    unknown = {"model_name": "own", "litellm_params": {"model": "hosted_vllm/own-model", "api_base": A}}
    engine = {"model_name": "engine", "litellm_params": {"model": "pitstop-engine/tiny", "api_base": A}}
    path = config(tmp_path, "prices.yaml", [listed, unknown, engine, model_entry("priced", A)])
    done = run_cli_here("config", "check", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "model mini: 1 deployment; prices: litellm's price map\n" in done.stdout
    assert "model own: 1 deployment; prices: none (costs nothing)\n" in done.stdout
    assert "model engine: 1 deployment; prices: none (costs nothing)\n" in done.stdout
    assert "model priced: 1 deployment; prices: model_info\n" in done.stdout


def test_diff_says_what_a_reload_keeps_builds_and_retires(tmp_path: Path) -> None:
    running = config(tmp_path, "running.yaml", [model_entry("m", A), model_entry("n", A)])
    new = config(tmp_path, "new.yaml", [model_entry("m", A), model_entry("m", B)])
    done = run_cli_here("config", "diff", str(running), str(new))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"  keep m#0  ({A})", f"  add  m  ({B})",
                                        "  retire n#0  (its requests in flight finish first)"]
    grouped = config(tmp_path, "grouped.yaml", [model_entry("m", A), model_entry("n", A)],
                     route_groups=[{"name": "auto", "models": ["m", "n"], "router": "random"}])
    regrouped = run_cli_here("config", "diff", str(running), str(grouped))
    assert regrouped.returncode == 0 and regrouped.stdout.splitlines()[-1] == "  route group auto: added"
    same = run_cli_here("config", "diff", str(running), str(running))
    assert same.returncode == 0 and same.stdout.splitlines()[-1] == "  nothing changes"


def test_diff_says_when_a_reload_would_refuse(tmp_path: Path) -> None:
    running = config(tmp_path, "running.yaml", [model_entry("m", A)])
    new = config(tmp_path, "new.yaml", [model_entry("m", A)], server={"port": 9999})
    done = run_cli_here("config", "diff", str(running), str(new))
    assert done.returncode == 1 and "these sections changed: server.port" in done.stdout
    missing = run_cli_here("config", "diff", str(running), str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "config file not found" in missing.stderr
