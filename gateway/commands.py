"""`pitstop serve`, `pitstop keys ...` and `pitstop export outcomes`: the gateway's commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("config/pitstop.yaml")


def add_gateway_commands(groups: argparse._SubParsersAction) -> None:
    serve = groups.add_parser("serve", help="run the gateway (default: the embedded config/pitstop.yaml)")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=serve_command)

    keys = groups.add_parser("keys", help="create, list and revoke API keys")
    keys.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    sub = keys.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--budget", type=float, help="budget in USD")
    create.set_defaults(handler=keys_create_command)
    listing = sub.add_parser("list", help="list keys")
    listing.set_defaults(handler=keys_list_command)
    revoke = sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    revoke.set_defaults(handler=keys_revoke_command)
    for command in (create, listing, revoke):
        # Also after the subcommand (`pitstop keys create --config X`), as `export outcomes` takes it;
        # SUPPRESS keeps a `--config` given before the subcommand from being reset to the default.
        command.add_argument("--config", type=Path, default=argparse.SUPPRESS)

    export = groups.add_parser("export", help="export training sets from the outcome log")
    what = export.add_subparsers(dest="command", metavar="WHAT", required=True)
    outcomes = what.add_parser("outcomes", help="one row per prompt and model (long format)")
    outcomes.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    outcomes.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    outcomes.add_argument("--out", type=Path, required=True)
    outcomes.add_argument("--metric", help="the feedback metric used as quality (default: all)")
    outcomes.set_defaults(handler=export_outcomes_command)


def _settings(path: Path):  # noqa: ANN202 (lazy import keeps `pitstop --help` fast)
    from gateway.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"pitstop: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _storage_url(path: Path) -> str:
    from storage.db import ensure_sqlite_dir
    from storage.migrate import upgrade

    url = _settings(path).storage.url
    ensure_sqlite_dir(url)
    upgrade(url)
    return url


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(args.config)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    app = create_app(settings)
    logging.getLogger("pitstop").info("gateway on http://%s:%d (OpenAI base URL http://%s:%d/v1)",
                                      host, port, host, port)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=False)
    return 0


def keys_create_command(args: argparse.Namespace) -> int:
    from storage.keys import KeyStore

    key_id, secret = KeyStore(_storage_url(args.config)).create(args.name, args.rpm, args.budget)
    print(f"id:     {key_id}\nsecret: {secret}\n(the secret is shown once; only its hash is stored)")
    return 0


def keys_list_command(args: argparse.Namespace) -> int:
    from storage.keys import KeyStore

    for key in KeyStore(_storage_url(args.config)).list():
        state = "revoked" if key.revoked_at else "active"
        print(f"{key.id}  {key.prefix}…  {key.name}  {state}  rpm={key.rpm_limit}  budget={key.budget_usd}  "
              f"spent={key.spent_usd:.6f}")
    return 0


def keys_revoke_command(args: argparse.Namespace) -> int:
    from storage.keys import KeyStore

    try:
        key = KeyStore(_storage_url(args.config)).revoke(args.key)
    except (KeyError, ValueError) as exc:
        print(f"pitstop: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"revoked {key.id} ({key.name})")
    return 0


def export_outcomes_command(args: argparse.Namespace) -> int:
    from storage.export import export_outcomes

    count = export_outcomes(_storage_url(args.config), args.out, format=args.format, metric=args.metric)
    print(f"wrote {count} rows to {args.out}")
    return 0
