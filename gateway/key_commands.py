"""`pitstop keys create|list|revoke|rotate` and `pitstop audit list`, on the config's database: keys as
/v1/keys makes them (gateway/key_admin.py), and the admin audit log as /v1/organization/audit_logs shows it
(gateway/audit_endpoints.py). Each change is audited as the CLI's user. A running gateway sees a change
made here within its key cache's 10 s (over HTTP, at once, on every replica with Redis)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gateway.commands import DEFAULT_CONFIG, _names, _positive_int, _priority, _settings, _storage_url, _usd


def _duration(text: str) -> int:
    """`30d`, `12h`, `90m`, `45s` -> seconds, as the API's `duration` (gateway/key_expiry.py)."""
    from engine.server.errors import APIError
    from gateway.key_expiry import duration_s

    try:
        return duration_s(text)
    except APIError:
        raise argparse.ArgumentTypeError(f"not a duration such as 30d, 12h, 90m or 45s: {text!r}") from None


def _grace(text: str) -> int:
    return 0 if text.strip() in ("0", "0s") else _duration(text)


def _since(text: str) -> int:
    """An ISO 8601 time (UTC where it names no zone), or a duration back from now (`24h`)."""
    try:
        return int(time.time()) - _duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"neither an ISO 8601 time nor a duration (24h): {text!r}") from None
    return int((moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).timestamp())


def add_key_commands(groups: argparse._SubParsersAction) -> None:
    keys = groups.add_parser("keys", help="create, list, revoke and rotate API keys")
    keys.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    sub = keys.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a key; its secret is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=_positive_int, help="requests per minute")
    create.add_argument("--tpm", type=_positive_int, help="tokens (prompt + completion) per minute")
    create.add_argument("--budget", type=_usd, help="budget in USD")
    create.add_argument("--budget-period", choices=("day", "week", "month"),
                        help="the budget is for each UTC day, week or calendar month (default: the key's life)")
    create.add_argument("--models", type=_names, metavar="NAME,NAME",
                        help="the models and route groups it may use (default: all)")
    create.add_argument("--priority", type=_priority, help="its requests' priority: the default, and the most "
                        "urgent they may ask for (lower goes first; default: any)")
    create.add_argument("--team", metavar="TEAM_ID", help="its team (`pitstop teams`), whose limits bound it too")
    create.add_argument("--mcp-servers", type=_names, metavar="NAME,NAME",
                        help="the MCP servers of the config's mcp_servers it may reach at /mcp (default: all)")
    create.add_argument("--duration", type=_duration, metavar="30d",
                        help="it expires this long from now (30d, 12h, 90m, 45s; default: never)")
    create.set_defaults(handler=keys_create_command)
    listing = sub.add_parser("list", help="list keys")
    listing.set_defaults(handler=keys_list_command)
    revoke = sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    revoke.set_defaults(handler=keys_revoke_command)
    rotate = sub.add_parser("rotate", help="give a key a new secret (printed once); the old one works through --grace")
    rotate.add_argument("key", metavar="KEY_ID")
    rotate.add_argument("--grace", type=_grace, default=0, metavar="1h",
                        help="how long the old secret keeps working (default 0: refused at once)")
    rotate.set_defaults(handler=keys_rotate_command)

    audit = groups.add_parser("audit", help="read the admin audit log")
    audit.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    audit_sub = audit.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    audit_list = audit_sub.add_parser("list", help="admin changes, newest first, one JSON object a line")
    audit_list.add_argument("--since", type=_since, metavar="ISO_TIME|24h", help="only events from then on")
    audit_list.add_argument("--type", action="append", metavar="api_key.created", help="only this event type "
                            "(repeat for several)")
    audit_list.add_argument("--limit", type=_positive_int, default=100, help="at most this many (default 100)")
    audit_list.set_defaults(handler=audit_list_command)
    for command in (create, listing, revoke, rotate, audit_list):
        # Also after the subcommand (`pitstop keys create --config X`), as `export outcomes` takes it;
        # SUPPRESS keeps a `--config` given before the subcommand from being reset to the default.
        command.add_argument("--config", type=Path, default=argparse.SUPPRESS)


def keys_create_command(args: argparse.Namespace) -> int:
    from gateway.audit_actor import cli_actor
    from gateway.team_commands import team_models_problem, unknown_names_problem
    from storage.keys import KeyStore

    if (args.models or args.mcp_servers) and (
            problem := unknown_names_problem(_settings(args.config), args.models, args.mcp_servers, args.config)):
        print(f"pitstop: {problem}", file=sys.stderr)  # a typo would make a key that can use nothing
        return 2
    url = _storage_url(args.config)
    if args.team is not None and (problem := team_models_problem(url, args.team, args.models, args.mcp_servers)):
        print(f"pitstop: {problem}", file=sys.stderr)
        return 2
    expires_at = int(time.time()) + args.duration if args.duration else None
    key_id, secret = KeyStore(url).create(args.name, args.rpm, args.budget, args.models, args.priority,
                                          args.budget_period, args.tpm, args.team, expires_at, cli_actor(),
                                          args.mcp_servers)
    print(f"id:     {key_id}\nsecret: {secret}\n(the secret is shown once; only its hash is stored)")
    if expires_at is not None:
        print(f"expires at {datetime.fromtimestamp(expires_at, UTC).isoformat()} ({expires_at})")
    return 0


def keys_list_command(args: argparse.Namespace) -> int:
    from storage.keys import KeyStore

    now = time.time()
    for key in KeyStore(_storage_url(args.config)).list():
        expired = key.expires_at is not None and key.expires_at <= now
        state = "revoked" if key.revoked_at else "expired" if expired else "active"
        models = ",".join(key.models) if key.models is not None else "all"
        budget = f"{key.budget_usd}/{key.budget_period}" if key.budget_period else f"{key.budget_usd}"
        print(f"{key.id}  {key.prefix}…  {key.name}  {state}  rpm={key.rpm_limit}  tpm={key.tpm_limit}  budget={budget}  "
              f"spent={key.spent_usd:.6f}  models={models}  priority={key.priority}  team={key.team_id}  "
              f"expires_at={key.expires_at}  "
              f"mcp_servers={','.join(key.mcp_servers) if key.mcp_servers is not None else 'all'}")
    return 0


def keys_revoke_command(args: argparse.Namespace) -> int:
    from gateway.audit_actor import cli_actor
    from storage.keys import KeyStore

    try:
        key = KeyStore(_storage_url(args.config)).revoke(args.key, cli_actor())
    except (KeyError, ValueError) as exc:
        print(f"pitstop: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"revoked {key.id} ({key.name})")
    return 0


def keys_rotate_command(args: argparse.Namespace) -> int:
    from gateway.audit_actor import cli_actor
    from storage.keys import KeyStore

    try:
        key, secret = KeyStore(_storage_url(args.config)).rotate(args.key, args.grace, cli_actor())
    except (KeyError, ValueError) as exc:
        print(f"pitstop: {exc.args[0]}", file=sys.stderr)
        return 1
    grace = f"until {key.previous_valid_until}" if key.previous_valid_until else "no longer: refused from now"
    print(f"id:     {key.id}\nsecret: {secret}\n(the secret is shown once; the old one works {grace})")
    return 0


def audit_list_command(args: argparse.Namespace) -> int:
    from gateway.audit_endpoints import audit_object
    from storage.audit import AuditQuery, AuditStore

    query = AuditQuery(event_types=tuple(args.type or ()),
                       effective_at={"gte": args.since} if args.since is not None else {}, limit=args.limit)
    rows, more = AuditStore(_storage_url(args.config)).list(query)
    for row in rows:
        print(json.dumps(audit_object(row), sort_keys=True))
    if more:
        print(f"(more than {args.limit}; raise --limit or narrow --since)", file=sys.stderr)
    return 0
