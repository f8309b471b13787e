"""The `pitstop` command: a small dispatcher over command groups (`pitstop serve`, `keys`, `export`, `engine ...`).
Each group adds its subcommands with a `handler(args) -> exit code`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.cli import add_engine_commands
from gateway.commands import add_gateway_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pitstop", description="Pitstop LLM gateway and engine")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    add_gateway_commands(groups)
    engine = groups.add_parser("engine", help="run and inspect Pitstop's own inference engine")
    add_engine_commands(engine.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
