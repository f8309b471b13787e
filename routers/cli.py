"""`pitstop train router` and `pitstop eval router`.

The gateway's CLI adds them with `add_router_commands(train_subparsers, eval_subparsers)`; each
handler takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from routers.registry import LEARNED_FAMILIES

DATASETS_HELP = "routerbench, mmlu, gsm8k, mt_bench, llmrouter, or outcomes:<export file>"
DEFAULT_RESULTS = Path("bench/results/routers")


def add_router_commands(train_subparsers: argparse._SubParsersAction,
                        eval_subparsers: argparse._SubParsersAction) -> None:
    train = train_subparsers.add_parser("router", help="train a router and write its artifact")
    train.add_argument("--family", default="pitstop", choices=LEARNED_FAMILIES)
    train.add_argument("--data", default="routerbench", help=DATASETS_HELP)
    train.add_argument("--split", help="training split (default: train where the data set has one, else all)")
    train.add_argument("--out", type=Path, help="artifact file (default: var/routers/<family>-<version>.joblib)")
    _common(train)
    train.set_defaults(handler=train_router_command)

    evaluate = eval_subparsers.add_parser("router", help="train and compare every router family on a data set")
    evaluate.add_argument("--data", nargs="+", default=["routerbench"], help=DATASETS_HELP)
    evaluate.add_argument("--families", default=",".join(LEARNED_FAMILIES), help="comma-separated families")
    evaluate.add_argument("--peer-features", default="published,static",
                          help="peers on 'published' (MiniLM head) and/or 'static' (distilled encoder) features")
    evaluate.add_argument("--folds", type=int, default=5, help="cross-fitting folds where there is no split")
    evaluate.add_argument("--latency-requests", type=int, default=300)
    evaluate.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap repetitions for AIQ")
    evaluate.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="report folder")
    _common(evaluate)
    evaluate.set_defaults(handler=eval_router_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", help="static encoder .npz (default: var/routers/encoders/, distilled if missing)")
    parser.add_argument("--data-root", type=Path, help="shared data folder (default ../shared/data or $PITSTOP_DATA)")


def train_router_command(args: argparse.Namespace) -> int:
    from routers.data.catalog import DataUnavailable  # noqa: PLC0415  (keeps `pitstop --help` fast)
    from routers.train_job import train_and_save  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO)
    try:
        path, manifest = train_and_save(args.family, args.data, args.split, args.out, args.encoder, args.data_root)
    except (DataUnavailable, ValueError) as error:  # ValueError: an unknown data set or split, named
        print(f"pitstop: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"artifact": str(path), "version": manifest["version"], "metrics": manifest["metrics"]},
                     indent=2, default=float))
    return 0


def eval_router_command(args: argparse.Namespace) -> int:
    from routers.data.catalog import DataUnavailable  # noqa: PLC0415
    from routers.run_eval import run_eval  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(LEARNED_FAMILIES))
    if unknown:
        print(f"pitstop: unknown router families {unknown}; known: {list(LEARNED_FAMILIES)}", file=sys.stderr)
        return 2
    peer_features = [f.strip() for f in args.peer_features.split(",") if f.strip()]
    status = 0
    for name in args.data:
        try:
            report = run_eval(name, args.out, families, peer_features, args.folds, args.latency_requests,
                              args.bootstrap, args.encoder, args.data_root)
        except DataUnavailable as error:
            print(f"pitstop: skipping {name}: {error}", file=sys.stderr)
            status = 2
            continue
        except ValueError as error:  # an unknown data set, named with the known ones
            print(f"pitstop: {error}", file=sys.stderr)
            return 2
        _print_summary(name, report)
    return status


def _print_summary(name: str, report: dict) -> None:
    results = [k for k in report if k.startswith("result")]
    for key in results:
        print(f"\n{name} ({report['protocol']}, {report['eval_prompts']} prompts) {key}")
        for row in report[key]["summary"]:
            cells = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in row.items() if k != "router")
            print(f"  {row['router']:38s} {cells}")
