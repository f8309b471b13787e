"""Run `pitstop train router` / `pitstop eval router` without the gateway CLI:

    python -m bench.router_eval eval --data routerbench gsm8k mmlu
    python -m bench.router_eval train --family pitstop --data routerbench
"""

from __future__ import annotations

import argparse
import sys

from routers.cli import add_router_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router_eval")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train").add_subparsers(dest="what", required=True)
    evaluate = commands.add_parser("eval").add_subparsers(dest="what", required=True)
    add_router_commands(train, evaluate)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["eval"]) and argv[1:2] != ["router"]:
        argv.insert(1, "router")  # `train --family x` is short for `train router --family x`
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
