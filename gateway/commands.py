"""`pitstop serve`, `pitstop export outcomes|chat-completions`, `pitstop prune outcomes`,
`pitstop calibrate router` and `pitstop eval router-logs`: the gateway's commands
(`pitstop keys` and `pitstop audit`: gateway/key_commands.py)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_CONFIG = Path("config/pitstop.yaml")
T = TypeVar("T")


def add_gateway_commands(groups: argparse._SubParsersAction) -> None:
    serve = groups.add_parser("serve", help="run the gateway (default: the embedded config/pitstop.yaml)")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=serve_command)

    export = groups.add_parser("export", help="export training sets from the outcome log")
    what = export.add_subparsers(dest="command", metavar="WHAT", required=True)
    outcomes = what.add_parser("outcomes", help="one row per prompt and model (long format)")
    outcomes.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    outcomes.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    outcomes.add_argument("--out", type=Path, required=True)
    outcomes.add_argument("--metric", help="the feedback metric used as quality (default: all)")
    outcomes.add_argument("--since", type=_utc_datetime, metavar="ISO_TIME",
                          help="only requests logged at or after this time (no zone: UTC)")
    outcomes.add_argument("--route-group", help="only this route group's requests")
    outcomes.set_defaults(handler=export_outcomes_command)
    stored = what.add_parser("chat-completions", help="stored chat completions (`store: true`) as a chat "
                             "fine-tuning file (JSONL: messages, with the answer last, and tools)")
    stored.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    stored.add_argument("--out", type=Path, required=True)
    stored.add_argument("--since", type=_utc_datetime, metavar="ISO_TIME", help="only those stored at or after this time")
    stored.add_argument("--model", help="only those a model answered, or a route group was asked for")
    stored.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="only those with this metadata pair (repeatable)")
    stored.set_defaults(handler=export_chat_completions_command)

    prune = groups.add_parser("prune", help="delete old rows from the outcome log")
    table = prune.add_subparsers(dest="command", metavar="WHAT", required=True)
    old = table.add_parser("outcomes", help="outcome rows and feedback older than --older-than-days (what "
                           "storage.retention_days has the gateway do hourly)")
    old.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    old.add_argument("--older-than-days", type=float, required=True)
    old.set_defaults(handler=prune_command)
    audit = table.add_parser("audit", help="admin audit events older than --older-than-days (what "
                             "storage.audit_retention_days has the gateway do hourly)")
    audit.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    audit.add_argument("--older-than-days", type=float, required=True)
    audit.set_defaults(handler=prune_command)
    videos = table.add_parser("videos", help="ended video jobs' rows older than --older-than-days (what "
                              "storage.video_retention_days has the gateway do hourly)")
    videos.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    videos.add_argument("--older-than-days", type=float, required=True)
    videos.set_defaults(handler=prune_command)

    calibrate = groups.add_parser("calibrate", help="set a route group's cost preference from a budget on its traffic")
    component = calibrate.add_subparsers(dest="command", metavar="COMPONENT", required=True)
    router = component.add_parser("router", help="what cost preference meets a target on a route group's traffic "
                                  "(the gateway does this itself for groups with `calibrate:`)")
    router.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    router.add_argument("--group", required=True, help="route group name")
    target = router.add_mutually_exclusive_group()
    target.add_argument("--avg-cost-usd", type=float, help="target average cost a request (USD)")
    target.add_argument("--model-share", type=float, help="target share of requests on --model")
    router.add_argument("--model", help="the group's model a share counts (default: its costliest)")
    router.add_argument("--traffic", help="'outcomes' (the group's logged requests), a data set, or outcomes:<file>")
    router.add_argument("--window", type=int, help="the most recent requests to use")
    router.set_defaults(handler=calibrate_router_command)


def add_router_log_commands(eval_subparsers: argparse._SubParsersAction) -> None:
    logs = eval_subparsers.add_parser(
        "router-logs", help="how a route group's router and candidate artifacts would have done on the group's "
        "logged traffic with feedback (off-policy estimates)")
    logs.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    logs.add_argument("--group", required=True, help="route group name")
    logs.add_argument("--logs", type=Path, help="a `pitstop export outcomes` file (default: the config's database)")
    logs.add_argument("--artifact", type=Path, action="append", default=[],
                      help="a candidate router artifact (repeatable); the group's router is always the baseline")
    logs.add_argument("--cost-preference", type=float,
                      help="route every request at this preference (default: the one it was routed at)")
    logs.add_argument("--since", type=_utc_datetime, metavar="ISO_TIME",
                      help="only requests logged at or after this time (e.g. when the candidate's training export "
                      "was taken; a time without a zone is UTC)")
    logs.add_argument("--out", type=Path, help="also write the report (JSON) here")
    logs.set_defaults(handler=router_logs_command)


def _utc_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more names, separated by commas")
    return names


def _number(text: str, low: float, high: float, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not low <= value <= high:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def _priority(text: str) -> float:
    return _number(text, -1e9, 1e9, "between -1e9 and 1e9")


def _usd(text: str) -> float:
    return _number(text, 0.0, math.nextafter(math.inf, 0), "a finite amount >= 0")


def _settings(path: Path):  # noqa: ANN202 (lazy import keeps `pitstop --help` fast)
    from gateway.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"pitstop: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _started(start: Callable[..., T], *args: Any) -> T:
    """`start(*args)`, with what stops a start from a config's facts (no database at `storage.url`, a
    model folder that is not one) said in one line, exit status 2, instead of a traceback."""
    from sqlalchemy.exc import OperationalError

    from gateway.config import ConfigError

    try:
        return start(*args)
    except ConfigError as exc:
        print(f"pitstop: {exc}", file=sys.stderr)
    except OperationalError as exc:
        print(f"pitstop: storage.url: cannot reach the database: {str(exc.orig).strip().splitlines()[0]}",
              file=sys.stderr)
    raise SystemExit(2)


def _storage_url(path: Path) -> str:
    from storage.db import ensure_sqlite_dir
    from storage.migrate import upgrade

    url = _settings(path).storage.url
    ensure_sqlite_dir(url)
    _started(upgrade, url)
    return url


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.drain import BACKSTOP_S, DrainingServer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    app = _started(create_app, settings)
    logging.getLogger("pitstop").info("gateway on http://%s:%d (OpenAI base URL http://%s:%d/v1)",
                                      host, port, host, port)
    grace_s = settings.server.graceful_shutdown_s
    backstop_s = None if grace_s is None else grace_s + BACKSTOP_S  # uvicorn's cut, if the gateway's did not end it
    server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=args.log_level, access_log=False,
                                           timeout_graceful_shutdown=backstop_s,
                                           timeout_keep_alive=settings.server.keep_alive_s,
                                           ws_per_message_deflate=settings.server.websocket_deflate),
                            app.state.pitstop.drain, grace_s)
    server.run()
    return 0 if server.started else 3  # uvicorn's exit status for a server that never started


def export_outcomes_command(args: argparse.Namespace) -> int:
    from storage.export import export_outcomes

    count = export_outcomes(_storage_url(args.config), args.out, format=args.format, metric=args.metric,
                            since=args.since, route_group=args.route_group)
    print(f"wrote {count} rows to {args.out}")
    return 0


def export_chat_completions_command(args: argparse.Namespace) -> int:
    from gateway.stored_completions import export_stored

    pairs = [pair.partition("=") for pair in args.metadata]
    if any(not key or not sep for key, sep, _ in pairs):
        print("--metadata takes KEY=VALUE", file=sys.stderr)
        return 2
    count = export_stored(_storage_url(args.config), args.out, args.since, args.model,
                          {key: value for key, _, value in pairs})
    print(f"wrote {count} lines to {args.out}")
    return 0


def prune_command(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from storage.db import create_engine
    from storage.models import utc_now
    from storage.retention import delete_audit_before, delete_before, delete_videos_before

    if not args.older_than_days > 0:
        print("pitstop: --older-than-days must be above 0", file=sys.stderr)
        return 2
    engine = create_engine(_storage_url(args.config))
    cutoff = utc_now() - timedelta(days=args.older_than_days)
    try:
        if args.command == "audit":
            print(f"deleted {delete_audit_before(engine, cutoff)} audit events")
            return 0
        if args.command == "videos":
            print(f"deleted {delete_videos_before(engine, cutoff)} ended video jobs")
            return 0
        deleted = delete_before(engine, cutoff)
    finally:
        engine.dispose()
    print(f"deleted {deleted['outcomes']} outcome rows and {deleted['feedback']} feedback rows")
    return 0


def calibrate_router_command(args: argparse.Namespace) -> int:
    """The group's `calibrate:` settings, overridden by the flags given; prints what the run found (JSON)."""
    import json

    from pydantic import ValidationError

    from gateway.route_calibration import calibrate_group, load_traffic
    from gateway.route_group_config import GroupCalibration
    from gateway.routing import RouteTable
    from storage.db import create_engine

    settings = _settings(args.config)
    routes = RouteTable(settings)
    group = routes.groups.get(args.group)
    if group is None:
        print(f"pitstop: no route group {args.group!r}; groups: {', '.join(routes.groups) or 'none'}", file=sys.stderr)
        return 2
    fields = group.group.calibrate.model_dump() if group.group.calibrate else {}
    if args.avg_cost_usd is not None or args.model_share is not None:
        fields.update(avg_cost_usd=args.avg_cost_usd, model_share=args.model_share, model=args.model)
    fields.update({k: v for k, v in (("traffic", args.traffic), ("window", args.window)) if v is not None})
    try:
        config = GroupCalibration(**{**fields, "min_requests": 1})
    except ValidationError as exc:
        print(f"pitstop: {exc.errors()[0]['msg']} (give --avg-cost-usd or --model-share, or set the group's "
              "calibrate:)", file=sys.stderr)
        return 2
    if config.model is not None and config.model not in group.group.models:
        print(f"pitstop: --model {config.model!r} is not one of the group's models", file=sys.stderr)
        return 2
    group.group = group.group.model_copy(update={"calibrate": config})
    db = create_engine(_storage_url(args.config)) if config.traffic == "outcomes" else None
    try:
        traffic = load_traffic(config, args.group, db)
    except (OSError, ValueError) as exc:  # a missing file or data set, an unknown name
        print(f"pitstop: cannot read the traffic {config.traffic!r}: {exc}", file=sys.stderr)
        return 2
    finally:
        if db is not None:
            db.dispose()
    state = calibrate_group(group, traffic)
    print(json.dumps(state.to_dict(), indent=1))
    return 0 if state.requests else 1


def router_logs_command(args: argparse.Namespace) -> int:
    """Prints the off-policy report (JSON); exit 1 when no logged request can be evaluated."""
    import json

    from gateway.router_logs import Policy, evaluate_on_logs, group_log, logged_since
    from gateway.routing import RouteTable
    from routers.artifact import load_router
    from routers.data.outcomes import read_export
    from routers.data.table import file_digest
    from storage.export import iter_training_rows

    if args.cost_preference is not None and not args.cost_preference >= 0:
        print("pitstop: --cost-preference must be a number >= 0", file=sys.stderr)
        return 2
    settings = _settings(args.config)
    group = RouteTable(settings).groups.get(args.group)
    if group is None:
        print(f"pitstop: no route group {args.group!r}", file=sys.stderr)
        return 2
    policies = [Policy("current", group.router, str(group.artifact) if group.artifact else None)]
    for path in args.artifact:
        try:
            policies.append(Policy(path.name, load_router(path), str(path)))
        except (OSError, ValueError, EOFError, KeyError, AttributeError, ImportError) as exc:
            print(f"pitstop: cannot load router artifact {path}: {exc}", file=sys.stderr)
            return 2
    if args.logs is not None:
        try:
            log = group_log(logged_since(read_export(args.logs), args.since), group)
        except (OSError, ValueError, KeyError) as exc:
            print(f"pitstop: cannot read the logs {args.logs}: {exc}", file=sys.stderr)
            return 2
        digest = file_digest([args.logs])[str(args.logs)]
    else:
        from storage.db import create_engine

        engine = create_engine(_storage_url(args.config))
        try:
            log = group_log(iter_training_rows(engine, since=args.since, route_group=args.group), group)
        finally:
            engine.dispose()
        digest = None
    report = evaluate_on_logs(group, log, policies, args.cost_preference, digest)
    text = json.dumps(report, indent=1, default=float)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    for warning in report["warnings"]:
        print(f"pitstop: {warning}", file=sys.stderr)
    return 0 if report["requests"] else 1
