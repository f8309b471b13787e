"""`pitstop teams create|list|update|delete`: teams of keys that share a budget and limits, as
/v1/teams makes them (gateway/team_admin.py), on the config's database. A running gateway sees a change
to a team within its key cache's 10 s (over HTTP, at once)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.audit_actor import cli_actor
from gateway.commands import DEFAULT_CONFIG, _names, _positive_int, _priority, _usd

NONE = "none"  # `--rpm none`: lift the limit


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parsed(text: str) -> Any:
        return NONE if text.lower() == NONE else parse(text)  # kept apart from an option not given

    parsed.__name__ = parse.__name__.lstrip("_")  # argparse names the type in its errors
    return parsed


def _limits(parser: argparse.ArgumentParser, lifting: bool) -> None:
    """The team's limits as options; with `lifting`, each also takes `none` to lift it."""
    wrap = _or_none if lifting else (lambda parse: parse)
    hint = " ('none' lifts it)" if lifting else ""
    parser.add_argument("--rpm", type=wrap(_positive_int), help="requests per minute, all its keys' together" + hint)
    parser.add_argument("--tpm", type=wrap(_positive_int), help="tokens (prompt + completion) per minute" + hint)
    parser.add_argument("--budget", type=wrap(_usd), help="budget in USD, its keys' spend together" + hint)
    parser.add_argument("--budget-period", choices=("day", "week", "month", *((NONE,) if lifting else ())),
                        help="the budget is for each UTC day, week or calendar month (default: the team's life)")
    parser.add_argument("--models", type=wrap(_names), metavar="NAME,NAME",
                        help="the models and route groups its keys may use (default: all)" + hint)
    parser.add_argument("--priority", type=wrap(_priority),
                        help="its keys' requests' priority where a key sets none (lower goes first)" + hint)
    parser.add_argument("--mcp-servers", type=wrap(_names), metavar="NAME,NAME",
                        help="the MCP servers of the config's mcp_servers its keys may reach at /mcp (default: all)"
                        + hint)


def add_team_commands(groups: argparse._SubParsersAction) -> None:
    teams = groups.add_parser("teams", help="create, list, change and delete teams of keys that share limits")
    teams.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    sub = teams.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a team; give it keys with `pitstop keys create --team ID`")
    create.add_argument("--name", required=True)
    _limits(create, lifting=False)
    create.set_defaults(handler=teams_create_command)
    listing = sub.add_parser("list", help="list teams, with their spend and active keys")
    listing.set_defaults(handler=teams_list_command)
    update = sub.add_parser("update", help="change a team's name or limits")
    update.add_argument("team", metavar="TEAM_ID")
    update.add_argument("--name")
    _limits(update, lifting=True)
    update.set_defaults(handler=teams_update_command)
    delete = sub.add_parser("delete", help="delete a team that has no active keys")
    delete.add_argument("team", metavar="TEAM_ID")
    delete.set_defaults(handler=teams_delete_command)
    for command in (create, listing, update, delete):
        command.add_argument("--config", type=Path, default=argparse.SUPPRESS)  # after the subcommand too


def _store(args: argparse.Namespace):  # noqa: ANN202 (lazy imports keep `pitstop --help` fast)
    from gateway.commands import _storage_url
    from storage.teams import TeamStore

    return TeamStore(_storage_url(args.config))


def _unknown_models(args: argparse.Namespace) -> bool:
    """Models the config serves neither as a model nor as a route group, or MCP servers it does not name
    (said, and True)."""
    from gateway.commands import _settings

    models = [] if args.models in (None, NONE) else args.models
    servers = [] if args.mcp_servers in (None, NONE) else args.mcp_servers
    if not models and not servers:
        return False
    problem = unknown_names_problem(_settings(args.config), models, servers, args.config)
    if problem:  # a typo would make a team whose keys can use nothing
        print(f"pitstop: {problem}", file=sys.stderr)
    return problem is not None


def unknown_names_problem(settings: Any, models: list[str] | None, mcp_servers: list[str] | None,
                          config: Path) -> str | None:
    """What `--models` or `--mcp-servers` names that the config has not (a model or route group; an MCP server
    of its `mcp_servers:`); None where it names only what it has."""
    if unknown := [name for name in models or () if not settings.serves(name)]:
        return f"--models: {', '.join(map(repr, unknown))} is neither a model nor a route group in {config}"
    configured = {server.name for server in settings.mcp_servers}
    if unknown := [name for name in mcp_servers or () if name not in configured]:
        return f"--mcp-servers: {', '.join(map(repr, unknown))} is not an MCP server of {config}'s mcp_servers"
    return None


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    given = {"name": args.name, "rpm_limit": args.rpm, "tpm_limit": args.tpm, "budget_usd": args.budget,
             "budget_period": args.budget_period, "models": args.models, "priority": args.priority,
             "mcp_servers": args.mcp_servers}
    return {name: None if value == NONE else value for name, value in given.items() if value is not None}


def teams_create_command(args: argparse.Namespace) -> int:
    if _unknown_models(args):
        return 2
    team = _store(args).create(**_fields(args), actor=cli_actor())
    print(f"id: {team.id}\n(give it keys: pitstop keys create --name NAME --team {team.id})")
    return 0


def teams_list_command(args: argparse.Namespace) -> int:
    store = _store(args)
    counts = store.key_counts()
    for team in store.list():
        models = ",".join(team.models) if team.models is not None else "all"
        budget = f"{team.budget_usd}/{team.budget_period}" if team.budget_period else f"{team.budget_usd}"
        print(f"{team.id}  {team.name}  keys={counts.get(team.id, 0)}  rpm={team.rpm_limit}  tpm={team.tpm_limit}  "
              f"budget={budget}  spent={team.spent_usd:.6f}  models={models}  priority={team.priority}  "
              f"mcp_servers={','.join(team.mcp_servers) if team.mcp_servers is not None else 'all'}")
    return 0


def teams_update_command(args: argparse.Namespace) -> int:
    fields = _fields(args)
    if not fields:
        print("pitstop: give something to change (--name, --rpm, --tpm, --budget, --budget-period, --models, --priority, "
              "--mcp-servers)", file=sys.stderr)
        return 2
    if _unknown_models(args):
        return 2
    try:
        team = _store(args).update(args.team, cli_actor(), **fields)
    except (KeyError, ValueError) as exc:
        print(f"pitstop: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"updated {team.id} ({team.name})")
    return 0


def teams_delete_command(args: argparse.Namespace) -> int:
    from storage.teams import TeamHasKeysError

    try:
        team = _store(args).delete(args.team, cli_actor())
    except (KeyError, TeamHasKeysError) as exc:
        print(f"pitstop: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"deleted {team.id} ({team.name})")
    return 0


def team_models_problem(storage_url: str, team_id: str, models: list[str] | None,
                        mcp_servers: list[str] | None = None) -> str | None:
    """Why a key may not be made in `team_id` with `models` and `mcp_servers` (no such team, a model or an MCP
    server the team may not use); None where it may."""
    from gateway.team_limits import TeamLimits
    from storage.teams import TeamStore

    team = TeamStore(storage_url).get(team_id)
    if team is None:
        return f"--team: no team {team_id!r}"
    outside = [m for m in models or () if not TeamLimits.of(team).may_use(m)]
    if outside:
        return f"--models: {outside[0]!r} is not among the models of team {team.name!r} ({', '.join(team.models or ())})"
    if team.mcp_servers is not None and (beyond := [s for s in mcp_servers or () if s not in team.mcp_servers]):
        return (f"--mcp-servers: {beyond[0]!r} is not among the MCP servers of team {team.name!r} "
                f"({', '.join(team.mcp_servers)})")
    return None
