"""Config errors fail at start with a message naming the field; API models whose key variable is unset
are skipped (and leave their route groups), while an unset variable elsewhere is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings, parse_settings
from tests.gateway.harness import gateway_config, model_entry, run_cli, write_config

API = "http://127.0.0.1:9/v1"


def base(tmp_path: Path) -> dict:
    return gateway_config(tmp_path, [model_entry("a", API), model_entry("b", API)],
                          [{"name": "grp", "models": ["a", "b"]}])


def broken(tmp_path: Path, where: str) -> dict:
    raw = base(tmp_path)
    if where == "router":
        raw["route_groups"][0]["router"] = "no-such-router"
    elif where == "group-model":
        raw["route_groups"][0]["models"].append("ghost")
    elif where == "price":
        raw["model_list"][1]["model_info"]["output_cost_per_token"] = -1e-6
    elif where == "model_dir":
        raw["model_list"][0]["litellm_params"] = {"model": "pitstop-local/a"}
    elif where == "reasoning-parser":
        raw["model_list"][0]["litellm_params"]["reasoning_parser"] = "think"
    elif where == "engine_api_base":
        raw["model_list"][0]["litellm_params"] = {"model": "pitstop-engine/a"}
    elif where == "env":
        raw["auth"] = {"master_key": "os.environ/PITSTOP_TEST_UNSET_MASTER"}
    elif where == "unknown-section":
        raw["storag"] = {}
    elif where == "port":
        raw["server"] = {"port": "eighty"}
    elif where == "group-name-clash":
        raw["route_groups"][0]["name"] = "a"
    elif where == "router-model-clash":
        for entry in raw["model_list"]:
            entry["model_info"]["router_model"] = "gpt-4-1106-preview"
    elif where == "explore":
        raw["route_groups"][0]["explore_epsilon"] = 1.5
    elif where == "explore-among":
        raw["route_groups"][0] |= {"explore_epsilon": 0.1, "explore_among": 1}
    elif where == "calibrate-two-targets":
        raw["route_groups"][0]["calibrate"] = {"avg_cost_usd": 0.01, "model_share": 0.3}
    elif where == "calibrate-no-target":
        raw["route_groups"][0]["calibrate"] = {"traffic": "outcomes"}
    elif where == "calibrate-share":
        raw["route_groups"][0]["calibrate"] = {"model_share": 1.2}
    elif where == "calibrate-model":
        raw["route_groups"][0]["calibrate"] = {"model_share": 0.3, "model": "ghost"}
    elif where == "calibrate-model-without-share":
        raw["route_groups"][0]["calibrate"] = {"avg_cost_usd": 0.01, "model": "a"}
    elif where == "model-list-type":
        raw["model_list"] = 5
    elif where == "route-groups-type":
        raw["route_groups"] = "auto"
    elif where == "queue-without-limit":
        raw["model_list"][0]["model_info"]["max_queue"] = 10
    elif where == "storage-url":
        raw["storage"]["url"] = "mysql://nobody@127.0.0.1/x"
    elif where == "calibrate-without-text":
        raw["route_groups"][0]["calibrate"] = {"avg_cost_usd": 0.01}
        raw["storage"]["store_text"] = False
    elif where == "compaction-model":
        raw["responses"] = {"compaction_model": "ghost"}
    elif where == "speculative-config":
        raw["model_list"][0]["litellm_params"]["speculative_config"] = {"method": "ngram"}
    elif where == "speculative-range":
        raw["model_list"][0]["litellm_params"]["speculative_config"] = {"prompt_lookup_min": 5, "prompt_lookup_max": 2}
    return raw


CASES = [
    ("router", ["route_groups.0.router", "no-such-router", "tier-prior"]),
    ("group-model", ["route_groups.0.models", "ghost"]),
    ("price", ["model_list.1.model_info.output_cost_per_token"]),
    ("model_dir", ["model_list.0.litellm_params", "model_dir"]),
    ("engine_api_base", ["model_list.0.litellm_params", "api_base"]),
    ("reasoning-parser", ["model_list.0.litellm_params", "reasoning_parser", "--reasoning-parser"]),
    ("env", ["auth.master_key", "PITSTOP_TEST_UNSET_MASTER"]),
    ("unknown-section", ["storag"]),
    ("port", ["server.port"]),
    ("group-name-clash", ["route_groups.0.name", "'a'"]),
    ("router-model-clash", ["route_groups.0.models", "router_model"]),
    ("explore", ["route_groups.0.explore_epsilon"]),
    ("explore-among", ["route_groups.0.explore_among", "greater than or equal to 2"]),
    ("calibrate-two-targets", ["route_groups.0.calibrate", "exactly one target"]),
    ("calibrate-no-target", ["route_groups.0.calibrate", "exactly one target"]),
    ("calibrate-share", ["route_groups.0.calibrate.model_share"]),
    ("model-list-type", ["model_list", "valid list"]),
    ("route-groups-type", ["route_groups", "valid list"]),
    ("storage-url", ["storage.url", "unsupported database 'mysql'"]),
    ("queue-without-limit", ["model_list.0.model_info", "max_concurrency"]),
    ("calibrate-model", ["route_groups.0.calibrate.model", "'ghost'"]),
    ("calibrate-model-without-share", ["route_groups.0.calibrate", "model_share"]),
    ("calibrate-without-text", ["route_groups.0.calibrate.traffic", "store_text"]),
    ("compaction-model", ["responses.compaction_model", "'ghost'"]),
    ("speculative-config", ["model_list.0.litellm_params", "speculative_config", "--speculative-config"]),
    ("speculative-range", ["model_list.0.litellm_params.speculative_config", "prompt_lookup_min"]),
]


@pytest.mark.parametrize(("where", "named"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                    named: list[str]) -> None:
    monkeypatch.delenv("PITSTOP_TEST_UNSET_MASTER", raising=False)
    with pytest.raises(ConfigError) as caught:
        parse_settings(broken(tmp_path, where))
    for text in named:
        assert text in str(caught.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: [\n  - model_name: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(tmp_path / "list.yaml")


def test_models_without_their_key_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PITSTOP_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("PITSTOP_TEST_SET_KEY", "sk-test")
    raw = base(tmp_path)
    raw["model_list"].append(model_entry("keyless", API, provider="openai", api_key="os.environ/PITSTOP_TEST_UNSET_KEY"))
    raw["model_list"].append(model_entry("keyed", API, provider="openai", api_key="os.environ/PITSTOP_TEST_SET_KEY"))
    raw["route_groups"][0]["models"] += ["keyless", "keyed"]
    raw["fallbacks"] = {"on_error": {"a": ["keyless", "keyed"]}}
    raw["hedging"] = {"enabled": True, "models": ["keyless", "a"]}
    settings = parse_settings(raw)
    assert settings.model_names == ["a", "b", "keyed"]
    assert settings.route_groups[0].models == ["a", "b", "keyed"]
    assert settings.model_list[2].litellm_params.api_key == "sk-test"
    assert settings.fallbacks.on_error == {"a": ["keyed"]} and settings.hedging.models == ["a"]


def test_embedded_default_parses_without_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = load_settings(Path(__file__).resolve().parents[2] / "config" / "pitstop.yaml")
    assert settings.model_names == ["tiny-small", "tiny-large", "minilm"]
    assert [g.name for g in settings.route_groups] == ["auto"]


@pytest.mark.parametrize("where", ["router", "price"])
def test_pitstop_serve_refuses_a_bad_config(tmp_path: Path, where: str) -> None:
    config = write_config(tmp_path / "pitstop.yaml", broken(tmp_path, where))
    result = run_cli("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("pitstop: invalid config")
    assert dict(CASES)[where][0] in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["no-database", "no-model-folder"])
def test_pitstop_serve_says_what_stops_it_starting(tmp_path: Path, where: str) -> None:
    """Facts only a start finds (the database is not there, a model folder is not one): one line, exit 2."""
    raw = base(tmp_path)
    if where == "no-database":
        raw["storage"]["url"] = "postgresql://nobody@127.0.0.1:1/pitstop"  # nothing listens on port 1
        expected = "pitstop: storage.url: cannot reach the database: connection failed"
    else:
        raw["model_list"][0]["litellm_params"] = {"model": "pitstop-local/a", "model_dir": str(tmp_path / "nowhere")}
        expected = f"pitstop: model a: litellm_params.model_dir {tmp_path / 'nowhere'} is not a model folder"
    config = write_config(tmp_path / "pitstop.yaml", raw)
    result = run_cli("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_path_the_cli_cannot_write_is_named_not_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path / "pitstop.yaml", base(tmp_path))
    (tmp_path / "taken").write_text("a file, not a folder")
    result = run_cli("export", "outcomes", "--config", str(config), "--out", str(tmp_path / "taken" / "rows.jsonl"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("pitstop: ") and "taken" in result.stderr and "Traceback" not in result.stderr
