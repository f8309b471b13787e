"""`pitstop keys create --mcp-servers` and `pitstop teams create|update --mcp-servers`: the MCP servers a key or
a team's keys may reach at /mcp (gateway/mcp_gateway.py), checked against the config's `mcp_servers:` and the
key's team, as POST /v1/keys and /v1/teams check them; `keys list` and `teams list` show them."""

from __future__ import annotations

from pathlib import Path

from storage.keys import KeyStore
from storage.teams import TeamStore
from tests.gateway.harness import gateway_config, model_entry, run_cli_here, write_config


def _config(tmp_path: Path) -> tuple[Path, str]:
    servers = [{"name": "calc", "url": "http://127.0.0.1:9/mcp"}, {"name": "weather", "url": "http://127.0.0.1:9/mcp"}]
    raw = gateway_config(tmp_path, [model_entry("m", "http://127.0.0.1:9/v1")], mcp_servers=servers)
    return write_config(tmp_path / "pitstop.yaml", raw), raw["storage"]["url"]


def _id(stdout: str) -> str:
    return stdout.split()[1]


def test_a_keys_mcp_servers_are_stored_listed_and_checked(tmp_path: Path) -> None:
    config, url = _config(tmp_path)
    made = run_cli_here("keys", "create", "--config", str(config), "--name", "calc-only", "--mcp-servers", "calc")
    assert made.returncode == 0, made.stderr
    key = KeyStore(url).get(_id(made.stdout))
    assert key is not None and key.mcp_servers == ["calc"]
    unlimited = run_cli_here("keys", "create", "--config", str(config), "--name", "all")
    assert KeyStore(url).get(_id(unlimited.stdout)).mcp_servers is None  # type: ignore[union-attr]
    listed = run_cli_here("keys", "list", "--config", str(config)).stdout
    assert "mcp_servers=calc" in listed and "mcp_servers=all" in listed
    typo = run_cli_here("keys", "create", "--config", str(config), "--name", "typo", "--mcp-servers", "calc,wether")
    assert typo.returncode == 2 and "--mcp-servers: 'wether' is not an MCP server" in typo.stderr
    assert [k.name for k in KeyStore(url).list()] == ["calc-only", "all"]  # the refused key was not made


def test_a_teams_mcp_servers_bound_its_keys_and_none_lifts_them(tmp_path: Path) -> None:
    config, url = _config(tmp_path)
    made = run_cli_here("teams", "create", "--config", str(config), "--name", "tools", "--mcp-servers", "calc")
    assert made.returncode == 0, made.stderr
    team_id = _id(made.stdout)
    assert TeamStore(url).get(team_id).mcp_servers == ["calc"]  # type: ignore[union-attr]
    assert "mcp_servers=calc" in run_cli_here("teams", "list", "--config", str(config)).stdout
    outside = run_cli_here("keys", "create", "--config", str(config), "--name", "w", "--team", team_id,
                           "--mcp-servers", "weather")
    assert outside.returncode == 2 and "'weather' is not among the MCP servers of team 'tools'" in outside.stderr
    inside = run_cli_here("keys", "create", "--config", str(config), "--name", "c", "--team", team_id,
                          "--mcp-servers", "calc")
    assert inside.returncode == 0, inside.stderr
    typo = run_cli_here("teams", "update", "--config", str(config), team_id, "--mcp-servers", "clac")
    assert typo.returncode == 2 and "'clac' is not an MCP server" in typo.stderr
    widened = run_cli_here("teams", "update", "--config", str(config), team_id, "--mcp-servers", "calc,weather")
    assert widened.returncode == 0 and TeamStore(url).get(team_id).mcp_servers == ["calc", "weather"]  # type: ignore[union-attr]
    lifted = run_cli_here("teams", "update", "--config", str(config), team_id, "--mcp-servers", "none")
    assert lifted.returncode == 0 and TeamStore(url).get(team_id).mcp_servers is None  # type: ignore[union-attr]
