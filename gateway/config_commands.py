"""`pitstop config check` and `pitstop config diff`: a config file read as `pitstop serve` reads it, before a
start or a reload (gateway/config_reload.py) is asked to take it.

    pitstop config check --config FILE        # parses and validates; lists models (where their prices come
                                              # from), deployments, route groups
    pitstop config diff RUNNING NEW           # what a reload from RUNNING to NEW keeps, builds and retires,
                                              # the route groups it rebuilds, the policies, limits and alerts it swaps

Both read the files only: no backend is built (a model folder that is not one, an upstream that does not
answer, show at start or at the reload, which refuses them without changing anything)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.commands import DEFAULT_CONFIG

if TYPE_CHECKING:
    from gateway.config import Settings

# How `check` names where a model's per-token prices come from (ModelEntry._priced).
PRICE_SOURCES = {"config": "model_info", "litellm": "litellm's price map", "none": "none (costs nothing)"}


def add_config_commands(groups: argparse._SubParsersAction) -> None:
    config = groups.add_parser("config", help="check a config file, or what a reload of it would change")
    sub = config.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser("check", help="parse and validate a config file as `pitstop serve` would")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    check.set_defaults(handler=check_command)
    diff = sub.add_parser("diff", help="what reloading RUNNING's gateway with NEW would keep, build and retire")
    diff.add_argument("running", type=Path, help="the config file the gateway runs")
    diff.add_argument("new", type=Path, help="the config file it would reload")
    diff.set_defaults(handler=diff_command)


def _read(path: Path) -> Settings | None:
    from gateway.config import ConfigError, load_settings  # lazily: `pitstop --help` stays fast

    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"pitstop: {exc}", file=sys.stderr)
        return None


def check_command(args: argparse.Namespace) -> int:
    settings = _read(args.config)
    if settings is None:
        return 2
    counts: dict[str, int] = {}
    sources: dict[str, dict[str, None]] = {}  # where each model's prices come from, in order
    for entry in settings.model_list:
        counts[entry.model_name] = counts.get(entry.model_name, 0) + 1
        sources.setdefault(entry.model_name, {})[PRICE_SOURCES[entry.model_info.price_source]] = None
    print(f"{args.config}: valid")
    for name, count in counts.items():
        print(f"  model {name}: {count} deployment{'s' if count != 1 else ''}; prices: {', '.join(sources[name])}")
    for wildcard in settings.wildcards:
        print(f"  wildcard {wildcard.model_name}")
    for group in settings.route_groups:
        print(f"  route group {group.name}: router {group.router} over {', '.join(group.models)}")
    return 0


def diff_command(args: argparse.Namespace) -> int:
    """Exit 0: a reload would take NEW (the plan is printed); 1: it would refuse it (the reason is printed);
    2: a file does not parse or validate."""
    from gateway.config_reload import ReloadRefused, plan_reload
    from gateway.deployment_build import new_deployment
    from gateway.deployments import DeploymentPool
    from gateway.limits_reload import changed_limits
    from gateway.policy_reload import changed_policies
    from gateway.routing import changed_groups
    from gateway.wildcard_reload import changed_patterns

    running, new = _read(args.running), _read(args.new)
    if running is None or new is None:
        return 2
    pool = DeploymentPool()
    current = [new_deployment(pool, entry, None, running) for entry in running.model_list]  # type: ignore[arg-type]
    try:
        plan = plan_reload(running, new, current)
    except ReloadRefused as exc:
        print(f"a reload would refuse {args.new}: {exc}")
        return 1
    for entry, kept in zip(plan.entries, plan.kept, strict=True):
        where = entry.litellm_params.api_base or entry.litellm_params.model
        print(f"  {'keep ' + kept.name if kept is not None else 'add  ' + entry.model_name}  ({where})")
    for deployment in plan.retired:
        print(f"  retire {deployment.name}  (its requests in flight finish first)")
    before, after = {g.name for g in running.route_groups}, {g.name for g in new.route_groups}
    regrouped = changed_groups(running, new)
    for name in sorted(regrouped):
        print(f"  route group {name}: {'added' if name not in before else 'removed' if name not in after else 'rebuilt'}")
    policies = changed_policies(running, new)
    for name in policies:
        print(f"  policy {name}: {_policy_change(getattr(running, name, None), getattr(new, name, None))}")
    patterns = changed_patterns(running, new)
    for name in patterns:
        print(f"  wildcard {name}: changed (the names it adopted retired once their requests end)")
    limits = changed_limits(running, new)
    for name in limits:
        print(f"  policy {name}: changed (from each key's next request; requests admitted keep theirs)")
    if not plan.added and not plan.retired and not regrouped and not policies and not patterns and not limits:
        print("  nothing changes")
    return 0


def _policy_change(before: object, after: object) -> str:
    """A section added, removed or changed; a server setting (not an attribute of Settings) changed."""
    if before is None and after is not None:
        return "added"
    if after is None and before is not None:
        return "removed"
    return "changed (requests in flight finish under the old one)"
