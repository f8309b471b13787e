"""`pitstop train ranker` and `pitstop eval ranker`.

The gateway's CLI adds them with `add_ranker_commands(train_subparsers, eval_subparsers)`; each
handler takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DATA_HELP = "alpaca_eval, routerbench, gsm8k, or outcomes:<export file> (several: one training set)"
DEFAULT_DATA = ["alpaca_eval", "routerbench", "gsm8k"]
FAMILIES = ["prompt-length", "ridge", "lambdarank", "pitstop"]
LAZY_FAMILIES = ["listmle", "listmle-blend"]  # torch + transformers, imported only when asked for (rankers/families.py)


def add_ranker_commands(train_subparsers: argparse._SubParsersAction,
                        eval_subparsers: argparse._SubParsersAction) -> None:
    train = train_subparsers.add_parser("ranker", help="train an output-length ranker and write its artifact")
    train.add_argument("--family", default="pitstop", choices=[*FAMILIES, *LAZY_FAMILIES])
    train.add_argument("--features", default="default", choices=["default", "static"],
                       help="default: statistics, cues, n-grams (no encoder table); static: + static embeddings")
    train.add_argument("--data", nargs="+", default=DEFAULT_DATA, help=DATA_HELP)
    train.add_argument("--out", type=Path, help="artifact file (default: var/rankers/<family>-<features>.joblib)")
    train.add_argument("--distil-from", metavar="LAYERS:TOKENS",
                       help="listmle only: fine-tune a teacher of this size first and distil the default size from it")
    train.add_argument("--unlabeled", type=int, default=3000,
                       help="with --distil-from: prompts without answers the teacher scores for the student")
    train.add_argument("--add-work-table", type=Path, metavar="ARTIFACT",
                       help="instead of training: add the work table (rankers/work.py) to an artifact from before it")
    _common(train)
    train.set_defaults(handler=train_ranker_command)

    evaluate = eval_subparsers.add_parser("ranker", help="compare ranker families: Kendall's tau per model")
    evaluate.add_argument("--data", nargs="+", default=DEFAULT_DATA, help=DATA_HELP)
    evaluate.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families")
    evaluate.add_argument("--features", default="default,static",
                          help="comma-separated feature sets: default, static, minilm (the transformer, offline only)")
    evaluate.add_argument("--unseen-families", default="pitstop,ridge",
                          help="families also measured on models left out of training (first feature set)")
    evaluate.add_argument("--folds", type=int, default=5, help="cross-validation folds on the training prompts")
    evaluate.add_argument("--latency-requests", type=int, default=300)
    evaluate.add_argument("--out", type=Path, default=Path("bench/results/rankers"), help="report folder")
    _common(evaluate)
    evaluate.set_defaults(handler=eval_ranker_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", help="static encoder .npz (default: var/routers/encoders/, distilled if missing)")
    parser.add_argument("--data-root", type=Path, help="shared data folder (default ../shared/data or $PITSTOP_DATA)")


def train_ranker_command(args: argparse.Namespace) -> int:
    from rankers.train_job import train_and_save  # noqa: PLC0415  (keeps `pitstop --help` fast)
    from routers.data.catalog import DataUnavailable  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO)
    if args.add_work_table is not None:
        from rankers.train_job import add_work_table  # noqa: PLC0415

        try:
            manifest = add_work_table(args.add_work_table, args.data_root)
        except (DataUnavailable, ValueError, OSError) as error:
            print(f"pitstop: {error}", file=sys.stderr)
            return 2
        print(json.dumps({"artifact": str(args.add_work_table), "version": manifest["version"],
                          "work_table": manifest["work_table"]}, indent=2))
        return 0
    try:
        path, manifest = train_and_save(args.family, args.data, args.out, args.features, args.encoder, args.data_root,
                                        distil_from=args.distil_from, unlabeled=args.unlabeled)
    except (DataUnavailable, ValueError) as error:
        print(f"pitstop: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"artifact": str(path), "version": manifest["version"], "metrics": manifest["metrics"]},
                     indent=2, default=float))
    return 0


def eval_ranker_command(args: argparse.Namespace) -> int:
    from rankers.evaluate import evaluate  # noqa: PLC0415
    from rankers.report import write_report  # noqa: PLC0415
    from rankers.train_job import load_many, make_featurizer  # noqa: PLC0415
    from routers.data.catalog import DataUnavailable  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES) - set(LAZY_FAMILIES))
    if unknown:
        print(f"pitstop: unknown ranker families {unknown}; known: {[*FAMILIES, *LAZY_FAMILIES]}", file=sys.stderr)
        return 2
    try:
        data = load_many(args.data, args.data_root)
        featurizers = {name: make_featurizer(name.strip(), args.encoder) for name in args.features.split(",")}
    except (DataUnavailable, KeyError, ValueError) as error:
        print(f"pitstop: {error}", file=sys.stderr)
        return 2
    report = evaluate(data, families, featurizers, args.folds,
                      {f.strip() for f in args.unseen_families.split(",")}, args.latency_requests)
    for path in write_report(report, args.out):
        print(f"wrote {path}")
    for row in report["results"]:
        print(f"  {row['family']:14s} {row['features']:8s} cv={row['cv_tau_alpaca']:.3f} "
              f"held-out alpaca={row['heldout_tau_alpaca_mean']:.3f} "
              f"all sources={row['heldout_tau_all_sources_mean']:.3f} "
              f"unseen={row.get('unseen_model_tau_mean', float('nan')):.3f} "
              f"p99={row['latency']['p99_ms']:.2f} ms")
    return 0
