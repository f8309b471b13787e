"""The `pitstop` command: a small dispatcher over command groups (`pitstop serve`, `keys`, `audit`, `teams`,
`export`, `report`, `engine ...`, `train ...`, `eval ...`). Each group adds its subcommands with a `handler(args) -> exit code`;
`train` and `eval` take one subcommand per learned component (router, ranker, tool-durations)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent_sessions.cli import add_tool_duration_commands
from engine.cli import add_engine_commands
from gateway.commands import DEFAULT_CONFIG, add_gateway_commands, add_router_log_commands
from gateway.config_commands import add_config_commands
from gateway.key_commands import add_key_commands
from gateway.team_commands import add_team_commands
from gateway.usage_report import add_report_commands
from rankers.cli import add_ranker_commands
from routers.cli import add_router_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pitstop", description="Pitstop LLM gateway and engine")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    add_gateway_commands(groups)
    add_key_commands(groups)
    add_team_commands(groups)
    add_report_commands(groups, DEFAULT_CONFIG)
    add_config_commands(groups)
    engine = groups.add_parser("engine", help="run and inspect Pitstop's own inference engine")
    add_engine_commands(engine.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True))
    train = groups.add_parser("train", help="train a learned component from data or outcome logs")
    evaluate = groups.add_parser("eval", help="evaluate learned components and write reports")
    train_sub = train.add_subparsers(dest="command", metavar="COMPONENT", required=True)
    eval_sub = evaluate.add_subparsers(dest="command", metavar="COMPONENT", required=True)
    add_router_commands(train_sub, eval_sub)
    add_router_log_commands(eval_sub)
    add_ranker_commands(train_sub, eval_sub)
    add_tool_duration_commands(train_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except OSError as exc:  # a path that cannot be read or written: say which, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"pitstop: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
