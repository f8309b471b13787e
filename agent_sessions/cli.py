"""`pitstop train tool-durations`: refit the tool-duration model from the outcome log."""

from __future__ import annotations

import argparse
import json


def add_tool_duration_commands(train_subparsers: argparse._SubParsersAction) -> None:
    train = train_subparsers.add_parser("tool-durations", help="refit agent tool durations from the outcome log")
    train.add_argument("--config", default="config/pitstop.yaml", help="gateway config (its storage URL and "
                       "sessions.tool_durations path)")
    train.add_argument("--storage-url", help="outcome database URL (default: the config's)")
    train.add_argument("--out", help="artifact file (default: the config's sessions.tool_durations)")
    train.set_defaults(handler=train_tool_durations_command)


def train_tool_durations_command(args: argparse.Namespace) -> int:
    from agent_sessions.tool_artifact import fit_from_outcomes, save_estimator  # noqa: PLC0415
    from gateway.config import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    url = args.storage_url or settings.storage.url
    out = args.out or (settings.resolve_path(settings.sessions.tool_durations)
                       if settings.sessions.tool_durations else None)
    if out is None:
        print("no output path: give --out or set sessions.tool_durations")
        return 2
    estimator, count = fit_from_outcomes(url)
    metrics = save_estimator(estimator, out, source=f"outcomes:{url}")
    print(json.dumps({"artifact": str(out), "observations": count, **metrics}))
    return 0
